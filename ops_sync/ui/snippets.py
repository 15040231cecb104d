"""What the add-edge page shows once: ways to start the appliance with its EDGE_BUNDLE.

The same lines README gives ("Run it", "Compose and Helm"), filled in with the publish's
pipeline URL, the edge's name and its bundle. Registry credentials stay placeholders: the
ops center never knows them. Every value put in here passed the ops center's own checks
(`center.PIPELINE_URL`, `center.EDGE_NAME`; a bundle is base64), so none needs shell quoting.
"""

from __future__ import annotations

from typing import Any

IMAGE = "ghcr.io/edge-appliance/edge:0.1.0"  # packaging/compose.yaml's default EDGE_IMAGE


def _registry(pipeline_url: str) -> str:
    return pipeline_url.split("/", 1)[0]


def docker_run(name: str, pipeline_url: str, bundle: str) -> str:
    return (
        f"docker run -d --name {name} -p 8080:8080 -v {name}-data:/persist \\\n"
        f"  -e PIPELINE_URL={pipeline_url} \\\n"
        f"  -e OCI_REGISTRY={_registry(pipeline_url)} -e OCI_USERNAME=... -e OCI_PASSWORD=... \\\n"
        f"  -e EDGE_BUNDLE={bundle} \\\n"
        f"  {IMAGE}"
    )


def compose(pipeline_url: str, bundle: str) -> str:
    return (
        f"export PIPELINE_URL={pipeline_url} OCI_REGISTRY={_registry(pipeline_url)}\n"
        "export OCI_USERNAME=... OCI_PASSWORD=...\n"
        f"export EDGE_BUNDLE={bundle}\n"
        "docker compose -f packaging/compose.yaml up -d"
    )


def helm(publish: dict[str, Any], bundle: str) -> str:
    """A values file and `helm install` of the publish's chart (placeholders when the
    publish pushed none)."""
    found = publish.get("helm")
    chart: dict[str, Any] = found if isinstance(found, dict) else {}
    url = str(chart.get("url") or chart.get("reference") or "oci://<registry>/<repo>/charts/<name>")
    version = str(chart.get("version") or "<chart version>")
    name = publish.get("pipeline_name") or "edge"
    return (
        "cat > local-values.yaml <<'VALUES'\n"
        f"ociRegistry: {{registry: {_registry(str(publish.get('pipeline_url', '')))}, "
        "username: ..., password: ...}\n"
        f'edgeBundle: "{bundle}"\n'
        "VALUES\n"
        f"helm install --namespace edge --create-namespace --values local-values.yaml {name} \\\n"
        f"  {url} --version {version}"
    )


def all_for(name: str, added: dict[str, Any]) -> dict[str, str]:
    """{"docker run", "compose", "helm"} for `center.add_edge`'s reply."""
    bundle = added["docker_run_variables"]["EDGE_BUNDLE"]
    url = added["pipeline_url"]
    return {
        "docker run": docker_run(name, url, bundle),
        "compose": compose(url, bundle),
        "helm": helm(added, bundle),
    }
