{{/*
ConfigMap of the service's settings as environment variables, read by its pydantic-settings
class. dict: root, envPrefix (e.g. "RAGFLEET_EMBEDDER_"), settings (optional extra map that
wins over .Values.settings). HOST, PORT, METRICS_PORT and GRACE_PERIOD_S come from
ports/gracePeriodSeconds (ports.metrics absent or 0: no metrics endpoint).
*/}}
{{- define "ragfleet-common.configmap" -}}
{{- $root := .root -}}
{{- $settings := merge (dict) (default dict .settings) $root.Values.settings -}}
{{- $_ := set $settings "host" "0.0.0.0" -}}
{{- $_ := set $settings "port" $root.Values.ports.grpc -}}
{{- $_ := set $settings "grace_period_s" $root.Values.gracePeriodSeconds -}}
{{- $_ := set $settings "metrics_port" (int (default 0 $root.Values.ports.metrics)) -}}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ include "ragfleet-common.fullname" $root }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "ragfleet-common.labels" $root | nindent 4 }}
data:
  {{- include "ragfleet-common.settingsEnv" (dict "envPrefix" .envPrefix "settings" $settings) | trim | nindent 2 }}
{{- end -}}
