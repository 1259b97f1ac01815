{{/* host:port of an upstream: the configured address, else the sibling chart's Service. */}}
{{- define "gateway.upstream" -}}
{{- $upstream := index .root.Values.upstreams .chart -}}
{{- if $upstream.address -}}
{{- $upstream.address -}}
{{- else -}}
{{- printf "%s:%d" (include "ragfleet-common.peerFullname" .) (int $upstream.port) -}}
{{- end -}}
{{- end -}}

{{- define "gateway.settings" -}}
rest_port: {{ .Values.ports.http }}
embedder_address: {{ include "gateway.upstream" (dict "root" . "chart" "embedder") }}
retriever_address: {{ include "gateway.upstream" (dict "root" . "chart" "retriever") }}
generator_address: {{ include "gateway.upstream" (dict "root" . "chart" "generator") }}
generator_application: {{ .Values.upstreams.generator.application }}
{{- end -}}

{{- define "gateway.httpPort" -}}
- name: http
  port: {{ .Values.ports.http }}
  appProtocol: http
{{- end -}}

{{/*
The API keys file, from auth.apiKeysSecret, mounted as a directory (not a subPath) so that
Kubernetes replaces it in place when the Secret changes and the gateway re-reads it. Without a
Secret the gateway refuses to start, so the chart refuses to render, unless auth.disabled.
*/}}
{{- define "gateway.apiKeysDir" -}}
/etc/ragfleet/api-keys
{{- end -}}

{{- define "gateway.authEnv" -}}
{{- $auth := .Values.auth -}}
{{- if $auth.disabled -}}
{{- if $auth.apiKeysSecret.name -}}
{{- fail "gateway: auth.disabled=true and auth.apiKeysSecret.name are both set; set one" -}}
{{- end -}}
- name: RAGFLEET_GATEWAY_AUTH_DISABLED
  value: "true"
{{- else if $auth.apiKeysSecret.name -}}
- name: RAGFLEET_GATEWAY_API_KEYS_FILE
  value: {{ printf "%s/%s" (include "gateway.apiKeysDir" .) $auth.apiKeysSecret.key }}
{{- else -}}
{{- fail "gateway: no API keys: set auth.apiKeysSecret.name to a Secret holding the keys file made by `ragfleet keys create` (its key: auth.apiKeysSecret.key), or auth.disabled=true for experiments only (every caller may then use every tenant); the gateway does not start with neither" -}}
{{- end }}
{{- with .Values.feedback.storeSecret }}
{{- if .name }}
- name: RAGFLEET_GATEWAY_FEEDBACK_STORE
  valueFrom:
    secretKeyRef:
      name: {{ .name }}
      key: {{ .key }}
- name: RAGFLEET_GATEWAY_FEEDBACK_SPOOL_DIR
  value: /tmp/feedback-spool
{{- end }}
{{- end }}
{{- end -}}

{{- define "gateway.authVolumes" -}}
{{- with .Values.auth.apiKeysSecret }}
{{- if .name }}
- name: api-keys
  secret:
    secretName: {{ .name }}
    items:
      - key: {{ .key }}
        path: {{ .key }}
    defaultMode: 0444
{{- end }}
{{- end }}
{{- end -}}

{{- define "gateway.authVolumeMounts" -}}
{{- if .Values.auth.apiKeysSecret.name }}
- name: api-keys
  mountPath: {{ include "gateway.apiKeysDir" . }}
  readOnly: true
{{- end }}
{{- end -}}
