{{/* Ingress to the Service port named `portName`, when .Values.ingress.enabled. dict: root, portName */}}
{{- define "ragfleet-common.ingress" -}}
{{- $root := .root -}}
{{- $portName := .portName -}}
{{- $service := include "ragfleet-common.fullname" $root -}}
{{- with $root.Values.ingress -}}
{{- if .enabled -}}
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: {{ $service }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "ragfleet-common.labels" $root | nindent 4 }}
  {{- with .annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  {{- with .className }}
  ingressClassName: {{ . }}
  {{- end }}
  {{- with .tls }}
  tls:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  rules:
    {{- range .hosts }}
    - {{- with .host }}
      host: {{ . | quote }}
      {{- end }}
      http:
        paths:
          {{- range .paths }}
          - path: {{ .path }}
            pathType: {{ .pathType | default "Prefix" }}
            backend:
              service:
                name: {{ $service }}
                port:
                  name: {{ $portName }}
          {{- end }}
    {{- end }}
{{- end -}}
{{- end -}}
{{- end -}}
