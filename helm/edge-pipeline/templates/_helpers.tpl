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
