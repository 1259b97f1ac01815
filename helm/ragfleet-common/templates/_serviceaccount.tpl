{{/* ServiceAccount; the services never call the Kubernetes API, so no token is mounted. dict: root */}}
{{- define "ragfleet-common.serviceaccount" -}}
{{- $root := .root -}}
{{- if $root.Values.serviceAccount.create -}}
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ include "ragfleet-common.serviceAccountName" $root }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "ragfleet-common.labels" $root | nindent 4 }}
  {{- with $root.Values.serviceAccount.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
automountServiceAccountToken: false
{{- end -}}
{{- end -}}
