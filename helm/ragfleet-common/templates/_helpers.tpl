{{/*
Names, labels, image and environment helpers. Templates that take the chart context take `$`;
the object templates in the other files take a dict whose `root` is `$`.
*/}}

{{- define "ragfleet-common.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release-scoped name of this chart's objects, as every Helm chart computes it. */}}
{{- define "ragfleet-common.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The Service name that the sibling chart `chart` of the same release gets by default, e.g. the
embedder's Service seen from the gateway: dict "root" $ "chart" "embedder".
*/}}
{{- define "ragfleet-common.peerFullname" -}}
{{- $release := .root.Release.Name -}}
{{- if contains .chart $release -}}
{{- $release | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" $release .chart | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "ragfleet-common.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ragfleet-common.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ragfleet-common.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "ragfleet-common.labels" -}}
helm.sh/chart: {{ include "ragfleet-common.chart" . }}
{{ include "ragfleet-common.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: {{ .Chart.Name }}
app.kubernetes.io/part-of: ragfleet
{{- end -}}

{{- define "ragfleet-common.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "ragfleet-common.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
Image reference: the chart's own registry/tag when set, else global.image.*, else the chart's
appVersion as tag. An empty registry leaves the runtime's default registry.
*/}}
{{- define "ragfleet-common.image" -}}
{{- $image := .Values.image -}}
{{- $global := .Values.global.image -}}
{{- $registry := default $global.registry $image.registry -}}
{{- $tag := default (default .Chart.AppVersion $global.tag) $image.tag | toString -}}
{{- if $registry -}}
{{- printf "%s/%s:%s" (trimSuffix "/" $registry) $image.repository $tag -}}
{{- else -}}
{{- printf "%s:%s" $image.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "ragfleet-common.imagePullSecrets" -}}
{{- $secrets := concat .Values.global.imagePullSecrets .Values.imagePullSecrets | uniq -}}
{{- if $secrets }}
imagePullSecrets:
{{- range $secrets }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
One environment value as a string: whole numbers without an exponent (YAML numbers arrive as
float64, so 20971520 would otherwise print as 2.097152e+07), lists and maps as JSON.
*/}}
{{- define "ragfleet-common.envValue" -}}
{{- if kindIs "string" . -}}
{{- . -}}
{{- else if or (kindIs "map" .) (kindIs "slice" .) -}}
{{- toJson . -}}
{{- else if and (kindIs "float64" .) (eq . (float64 (int64 .))) -}}
{{- int64 . -}}
{{- else -}}
{{- toString . -}}
{{- end -}}
{{- end -}}

{{/* settings map (snake_case keys) -> "PREFIX_KEY: value" lines; nulls are left out. */}}
{{- define "ragfleet-common.settingsEnv" -}}
{{- $prefix := .envPrefix -}}
{{- range $key, $value := .settings }}
{{- if not (kindIs "invalid" $value) }}
{{ printf "%s%s" $prefix ($key | upper) }}: {{ include "ragfleet-common.envValue" $value | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Pod placement; nothing here pins an architecture, so arm64 and amd64 nodes both qualify. */}}
{{- define "ragfleet-common.podScheduling" -}}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- end -}}

{{/*
Native gRPC probes (grpc.health.v1, overall status "") on `port`. The services report SERVING
only once their models or index are loaded, and NOT_SERVING while draining after SIGTERM.
*/}}
{{- define "ragfleet-common.grpcProbes" -}}
{{- $port := .port -}}
{{- with .root.Values.probes }}
startupProbe:
  grpc:
    port: {{ $port }}
  {{- toYaml .startup | nindent 2 }}
readinessProbe:
  grpc:
    port: {{ $port }}
  {{- toYaml .readiness | nindent 2 }}
livenessProbe:
  grpc:
    port: {{ $port }}
  {{- toYaml .liveness | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Seconds Kubernetes waits after SIGTERM: the service's drain period plus a margin. */}}
{{- define "ragfleet-common.terminationGracePeriodSeconds" -}}
{{- add (ceil .Values.gracePeriodSeconds) .Values.terminationGraceMarginSeconds -}}
{{- end -}}
