{{/* Chart name, truncated to a DNS label. */}}
{{- define "edge-pipeline.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Resource name prefix: the release name, plus the chart name unless the release has it. */}}
{{- define "edge-pipeline.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "edge-pipeline.selectorLabels" -}}
app.kubernetes.io/name: {{ include "edge-pipeline.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "edge-pipeline.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | trunc 63 | trimSuffix "-" }}
{{ include "edge-pipeline.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Name of the Secret holding OCI_PASSWORD / EDGE_BUNDLE. */}}
{{- define "edge-pipeline.secretName" -}}
{{- default (printf "%s-secrets" (include "edge-pipeline.fullname" .)) .Values.existingSecret -}}
{{- end -}}

{{/* Whether the chart creates its own Secret. */}}
{{- define "edge-pipeline.ownSecret" -}}
{{- if and (not .Values.existingSecret) (or .Values.ociRegistry.password .Values.edgeBundle) -}}
true
{{- end -}}
{{- end -}}

{{/* The engine image: repository:tag, the variant chosen by gpus / variant. */}}
{{- define "edge-pipeline.image" -}}
{{- $tag := .Values.image.tag -}}
{{- if not $tag -}}
{{- $tag = .Chart.AppVersion -}}
{{- if gt (int .Values.gpus) 0 -}}
{{- $tag = printf "%s-gpu" $tag -}}
{{- else if .Values.variant -}}
{{- $tag = printf "%s-%s" $tag .Values.variant -}}
{{- end -}}
{{- end -}}
{{- if hasPrefix "sha256:" $tag -}}
{{- printf "%s@%s" .Values.image.repository $tag -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* kubernetes.io/arch for the publish's arch (x86 | arm), empty for any. */}}
{{- define "edge-pipeline.kubeArch" -}}
{{- $arch := lower (toString .Values.arch) -}}
{{- if has $arch (list "x86" "x86_64" "amd64") -}}
amd64
{{- else if has $arch (list "arm" "arm64" "aarch64") -}}
arm64
{{- else if $arch -}}
{{- fail (printf "arch %q is not one of x86, arm (or empty for any node)" .Values.arch) -}}
{{- end -}}
{{- end -}}

{{/* CONFIG_CPUS: configCpus, else resources.cpus rounded up (at least 1). */}}
{{- define "edge-pipeline.configCpus" -}}
{{- if .Values.configCpus -}}
{{- .Values.configCpus | int -}}
{{- else -}}
{{- max 1 (ceil (.Values.resources.cpus | float64) | int) -}}
{{- end -}}
{{- end -}}

{{/* One engine owns the persistent volume; more than one each get an emptyDir. */}}
{{- define "edge-pipeline.replicas" -}}
{{- $replicas := int .Values.replicaCount -}}
{{- if lt $replicas 1 -}}
{{- fail (printf "replicaCount %v must be 1 or more" .Values.replicaCount) -}}
{{- end -}}
{{- if and (gt $replicas 1) .Values.edgeBundle -}}
{{- fail (printf "replicaCount %d with an edgeBundle: a bundle joins one device; install one release per edge (replicaCount 1), or leave edgeBundle empty" $replicas) -}}
{{- end -}}
{{- $replicas -}}
{{- end -}}

{{- define "edge-pipeline.persistentVolume" -}}
{{- if and .Values.persistence.enabled (eq (int .Values.replicaCount) 1) -}}true{{- end -}}
{{- end -}}

{{/* deploymentLabel "key:value" (or "key=value") as a nodeSelector entry. */}}
{{- define "edge-pipeline.deploymentLabel" -}}
{{- with .Values.deploymentLabel -}}
{{- $parts := regexSplit "[:=]" (toString .) 2 -}}
{{- if or (ne (len $parts) 2) (not (regexMatch "^([A-Za-z0-9][-A-Za-z0-9_.]*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$" (index $parts 0))) (not (regexMatch "^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$" (index $parts 1))) -}}
{{- fail (printf "deploymentLabel %q is not a node label key:value such as doc-gpu-label:true" .) -}}
{{- end -}}
{{- dict (index $parts 0) (index $parts 1) | toJson -}}
{{- end -}}
{{- end -}}
