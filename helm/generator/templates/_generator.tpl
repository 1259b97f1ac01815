{{/* RAGFLEET_GENERATOR_* settings of the Serve application (runtime_env env_vars). */}}
{{- define "generator.appEnv" -}}
{{- $v := .Values -}}
{{- $settings := deepCopy $v.settings -}}
{{- $_ := set $settings "port" $v.ports.grpc -}}
{{- $_ := set $settings "http_port" $v.ports.serve -}}
{{- $_ := set $settings "app_name" $v.appName -}}
{{- $_ := set $settings "grace_period_s" $v.gracePeriodSeconds -}}
{{- $_ := set $settings "metrics_port" (int (default 0 $v.ports.metrics)) -}}
{{- if $v.ports.metrics -}}
{{- /* The ingress replica's metrics endpoint must be reachable from outside its pod. */ -}}
{{- $_ := set $settings "host" "0.0.0.0" -}}
{{- end -}}
{{- $_ := set $settings "model_cache_dir" (printf "%s/models" $v.modelCache.mountPath) -}}
{{- if $v.gpu.enabled -}}
{{- $names := list -}}
{{- $ids := dict -}}
{{- range $v.gpu.models -}}
{{- $names = append $names .name -}}
{{- $_ := set $ids .name .model -}}
{{- end -}}
{{- $_ := set $settings "engine" "vllm" -}}
{{- $_ := set $settings "models" $names -}}
{{- $_ := set $settings "vllm_models" $ids -}}
{{- $_ := set $settings "num_gpus" $v.gpu.gpusPerReplica -}}
{{- range $key, $value := $v.gpu.vllm -}}
{{- $_ := set $settings (printf "vllm_%s" $key) $value -}}
{{- end -}}
{{- end -}}
{{- include "ragfleet-common.settingsEnv" (dict "envPrefix" "RAGFLEET_GENERATOR_" "settings" $settings) -}}
{{- end -}}

{{/* The Ray Serve config (serveConfigV2): proxies with gRPC options and the one application. */}}
{{- define "generator.serveConfig" -}}
{{- $v := .Values -}}
proxy_location: {{ $v.serve.proxyLocation }}
http_options:
  host: 0.0.0.0
  port: {{ $v.ports.serve }}
grpc_options:
  port: {{ $v.ports.grpc }}
  grpc_servicer_functions:
    {{- toYaml $v.grpcServicerFunctions | nindent 4 }}
  {{- with $v.serve.requestTimeoutS }}
  request_timeout_s: {{ . }}
  {{- end }}
logging_config:
  encoding: {{ eq ($v.settings.log_format | default "json") "json" | ternary "JSON" "TEXT" }}
  log_level: {{ $v.settings.log_level | default "INFO" }}
applications:
  - name: {{ $v.appName }}
    route_prefix: /{{ $v.appName }}
    import_path: {{ $v.serveImportPath }}
    {{- with $v.serve.args }}
    args:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    runtime_env:
      env_vars:
        {{- include "generator.appEnv" . | trim | nindent 8 }}
    {{- with include "generator.deployments" . | fromYamlArray }}
    deployments:
      {{- toYaml . | nindent 6 }}
    {{- end }}
{{- end -}}

{{/* Serve deployment overrides by name (per-model GPUs come from the settings). */}}
{{- define "generator.deployments" -}}
{{- toYaml .Values.serve.deployments -}}
{{- end -}}

{{/*
Pod template of a Ray node. dict: root, container ("ray-head" / "ray-worker"), image,
resources, head (bool), env (list), nodeSelector (map), tolerations (list).
KubeRay adds the ray start command and, since none are given here, its own probes (they run
bash, wget and grep, which the image provides).
*/}}
{{- define "generator.rayPod" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
metadata:
  labels:
    {{- include "ragfleet-common.labels" $root | nindent 4 }}
    {{- with $v.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- $annotations := include "ragfleet-common.prometheusAnnotations" $root | fromYaml }}
  {{- with merge $annotations (default dict $v.podAnnotations) }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  {{- with include "ragfleet-common.imagePullSecrets" $root | trim }}
  {{- . | nindent 2 }}
  {{- end }}
  securityContext:
    {{- toYaml $v.podSecurityContext | nindent 4 }}
  terminationGracePeriodSeconds: {{ include "ragfleet-common.terminationGracePeriodSeconds" $root }}
  {{- with .nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  containers:
    - name: {{ .container }}
      image: {{ .image }}
      imagePullPolicy: {{ $v.image.pullPolicy }}
      ports:
        {{- if .head }}
        - name: gcs-server
          containerPort: 6379
        - name: dashboard
          containerPort: 8265
        - name: client
          containerPort: 10001
        {{- end }}
        - name: serve
          containerPort: {{ $v.ports.serve }}
        - name: grpc
          containerPort: {{ $v.ports.grpc }}
        {{- with $v.ports.metrics }}
        - name: metrics
          containerPort: {{ . }}
        {{- end }}
      {{- with .env }}
      env:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      resources:
        {{- toYaml .resources | nindent 8 }}
      securityContext:
        {{- toYaml $v.securityContext | nindent 8 }}
      volumeMounts:
        - name: model-cache
          mountPath: {{ $v.modelCache.mountPath }}
        {{- include "ragfleet-common.serviceCredentialVolumeMounts" $root | nindent 8 }}
  volumes:
    - name: model-cache
      emptyDir:
        sizeLimit: {{ $v.modelCache.sizeLimit }}
    {{- include "ragfleet-common.serviceCredentialVolumes" $root | nindent 4 }}
{{- end -}}

{{/* Image of the GPU workers: the non-empty gpu.image fields over image. */}}
{{- define "generator.gpuImage" -}}
{{- $image := deepCopy .Values.image -}}
{{- range $key, $value := .Values.gpu.image -}}
{{- if $value -}}
{{- $_ := set $image $key $value -}}
{{- end -}}
{{- end -}}
{{- include "ragfleet-common.image" (dict "Values" (dict "image" $image "global" .Values.global) "Chart" .Chart) -}}
{{- end -}}

{{/*
Environment of the Ray containers: caches on the model-cache volume, the service credential's
file (Ray's worker processes, the Serve replicas among them, inherit it), then extraEnv.
*/}}
{{- define "generator.rayEnv" -}}
- name: HF_HOME
  value: {{ printf "%s/huggingface" .Values.modelCache.mountPath }}
{{ include "ragfleet-common.serviceCredentialEnv" (dict "root" . "envPrefix" "RAGFLEET_GENERATOR_") }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}
