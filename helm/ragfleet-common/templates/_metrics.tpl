{{/*
Prometheus scraping of the service's /metrics on ports.metrics (none when it is 0 or absent).
*/}}

{{/* prometheus.io/* annotations for pods and Services, when ports.metrics and
metrics.annotations are set. Takes the chart context ($). */}}
{{- define "ragfleet-common.prometheusAnnotations" -}}
{{- $v := .Values -}}
{{- if and $v.ports.metrics (dig "annotations" true (default dict $v.metrics)) }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ $v.ports.metrics | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end -}}

{{/* A prometheus-operator ServiceMonitor for the Service's `metrics` port, when
metrics.serviceMonitor.enabled. dict: root. */}}
{{- define "ragfleet-common.serviceMonitor" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $monitor := dig "serviceMonitor" dict (default dict $v.metrics) -}}
{{- if and $v.ports.metrics $monitor.enabled }}
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata:
  name: {{ include "ragfleet-common.fullname" $root }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "ragfleet-common.labels" $root | nindent 4 }}
    {{- with $monitor.labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  selector:
    matchLabels:
      {{- include "ragfleet-common.selectorLabels" $root | nindent 6 }}
  endpoints:
    - port: metrics
      path: /metrics
      interval: {{ $monitor.interval | default "30s" }}
{{- end }}
{{- end -}}
