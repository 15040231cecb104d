from ops_sync.cli import main

raise SystemExit(main())
