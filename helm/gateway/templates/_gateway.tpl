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
