{{/*
Service with the `grpc` port and, optionally, more. dict: root, extraPorts (list of
{name, port, appProtocol}), extraSelector (map added to the selector).
*/}}
{{- define "ragfleet-common.service" -}}
{{- $root := .root -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "ragfleet-common.fullname" $root }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "ragfleet-common.labels" $root | nindent 4 }}
  {{- $annotations := include "ragfleet-common.prometheusAnnotations" $root | fromYaml }}
  {{- with merge $annotations (default dict $root.Values.service.annotations) }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  type: {{ $root.Values.service.type }}
  selector:
    {{- include "ragfleet-common.selectorLabels" $root | nindent 4 }}
    {{- with .extraSelector }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    - name: grpc
      port: {{ $root.Values.ports.grpc }}
      targetPort: {{ $root.Values.ports.grpc }}
      protocol: TCP
      appProtocol: grpc
    {{- range .extraPorts }}
    - name: {{ .name }}
      port: {{ .port }}
      targetPort: {{ .port }}
      protocol: TCP
      {{- with .appProtocol }}
      appProtocol: {{ . }}
      {{- end }}
    {{- end }}
    {{- with $root.Values.ports.metrics }}
    - name: metrics
      port: {{ . }}
      targetPort: {{ . }}
      protocol: TCP
      appProtocol: http
    {{- end }}
{{- end -}}
