{{/* PodDisruptionBudget from .Values.pdb (minAvailable or maxUnavailable). dict: root, selector (optional map) */}}
{{- define "ragfleet-common.pdb" -}}
{{- $root := .root -}}
{{- with $root.Values.pdb -}}
{{- if .enabled -}}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "ragfleet-common.fullname" $root }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "ragfleet-common.labels" $root | nindent 4 }}
spec:
  {{- if not (kindIs "invalid" .minAvailable) }}
  minAvailable: {{ .minAvailable }}
  {{- else }}
  maxUnavailable: {{ .maxUnavailable | default 1 }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "ragfleet-common.selectorLabels" $root | nindent 6 }}
{{- end -}}
{{- end -}}
{{- end -}}
