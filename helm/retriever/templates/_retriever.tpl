{{/* Workload kind for the backend; fails on a configuration that would split the index. */}}
{{- define "retriever.kind" -}}
{{- if eq .Values.backend "embedded" -}}
{{- if or (gt (int .Values.replicaCount) 1) .Values.autoscaling.enabled -}}
{{- fail "retriever: backend=embedded keeps the index in one pod's volume; use replicaCount 1 and autoscaling.enabled=false, or backend=opensearch to scale out" -}}
{{- end -}}
StatefulSet
{{- else if eq .Values.backend "opensearch" -}}
Deployment
{{- else -}}
{{- fail (printf "retriever: backend must be embedded or opensearch, not %q" .Values.backend) -}}
{{- end -}}
{{- end -}}

{{/* Backend settings added to the ConfigMap. */}}
{{- define "retriever.backendSettings" -}}
backend: {{ .Values.backend }}
{{- if eq .Values.backend "embedded" }}
data_dir: {{ .Values.persistence.mountPath }}
{{- else }}
opensearch_url: {{ required "retriever: opensearch.url is required with backend=opensearch" .Values.opensearch.url | quote }}
{{- end }}
{{- end -}}

{{/* OpenSearch credentials from an existing Secret. */}}
{{- define "retriever.secretEnv" -}}
{{- with .Values.opensearch.auth }}
{{- if and (eq $.Values.backend "opensearch") .existingSecret }}
- name: RAGFLEET_RETRIEVER_OPENSEARCH_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret }}
      key: {{ .usernameKey }}
- name: RAGFLEET_RETRIEVER_OPENSEARCH_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret }}
      key: {{ .passwordKey }}
{{- end }}
{{- end }}
{{- end -}}
