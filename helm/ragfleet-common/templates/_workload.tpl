{{/*
The service's Deployment, or a StatefulSet whose pods each own a `data` PersistentVolumeClaim
(from .Values.persistence) mounted at .Values.persistence.mountPath.
dict:
  root         the calling chart's context ($)
  kind         "Deployment" (default) or "StatefulSet"
  envPrefix    settings prefix, e.g. "RAGFLEET_RETRIEVER_" (the ConfigMap checksum depends on it)
  settings     extra settings, as given to ragfleet-common.configmap
  extraPorts   more container ports: list of {name, port}
  env          more container env entries (list), e.g. secretKeyRef values
  envFrom      more envFrom entries (list)
  volumes      more pod volumes (list), e.g. a mounted Secret
  volumeMounts more container volume mounts (list)
Every workload mounts the fleet's service credential (ragfleet-common.serviceCredential*).
*/}}
{{- define "ragfleet-common.workload" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $kind := .kind | default "Deployment" -}}
{{- $fullname := include "ragfleet-common.fullname" $root -}}
{{- $stateful := eq $kind "StatefulSet" -}}
{{- $config := include "ragfleet-common.configmap" (dict "root" $root "envPrefix" .envPrefix "settings" .settings) -}}
apiVersion: apps/v1
kind: {{ $kind }}
metadata:
  name: {{ $fullname }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "ragfleet-common.labels" $root | nindent 4 }}
spec:
  {{- if not $v.autoscaling.enabled }}
  replicas: {{ $v.replicaCount }}
  {{- end }}
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      {{- include "ragfleet-common.selectorLabels" $root | nindent 6 }}
  {{- if $stateful }}
  serviceName: {{ $fullname }}
  podManagementPolicy: Parallel
  updateStrategy:
    type: RollingUpdate
  {{- else }}
  strategy:
    {{- toYaml $v.updateStrategy | nindent 4 }}
  {{- end }}
  template:
    metadata:
      labels:
        {{- include "ragfleet-common.labels" $root | nindent 8 }}
        {{- with $v.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        checksum/config: {{ $config | sha256sum }}
        {{- include "ragfleet-common.prometheusAnnotations" $root | nindent 8 }}
        {{- with $v.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "ragfleet-common.serviceAccountName" $root }}
      automountServiceAccountToken: false
      {{- with include "ragfleet-common.imagePullSecrets" $root | trim }}
      {{- . | nindent 6 }}
      {{- end }}
      securityContext:
        {{- toYaml $v.podSecurityContext | nindent 8 }}
      terminationGracePeriodSeconds: {{ include "ragfleet-common.terminationGracePeriodSeconds" $root }}
      {{- with include "ragfleet-common.podScheduling" $root | trim }}
      {{- . | nindent 6 }}
      {{- end }}
      containers:
        - name: {{ $root.Chart.Name }}
          image: {{ include "ragfleet-common.image" $root }}
          imagePullPolicy: {{ $v.image.pullPolicy }}
          ports:
            - name: grpc
              containerPort: {{ $v.ports.grpc }}
              protocol: TCP
            {{- range .extraPorts }}
            - name: {{ .name }}
              containerPort: {{ .port }}
              protocol: TCP
            {{- end }}
            {{- with $v.ports.metrics }}
            - name: metrics
              containerPort: {{ . }}
              protocol: TCP
            {{- end }}
          envFrom:
            - configMapRef:
                name: {{ $fullname }}
            {{- with concat (default list .envFrom) $v.extraEnvFrom }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          {{- $credentialEnv := include "ragfleet-common.serviceCredentialEnv" (dict "root" $root "envPrefix" .envPrefix) | fromYamlArray }}
          env:
            {{- toYaml (concat $credentialEnv (default list .env) $v.extraEnv) | nindent 12 }}
          {{- include "ragfleet-common.grpcProbes" (dict "root" $root "port" $v.ports.grpc) | trim | nindent 10 }}
          resources:
            {{- toYaml $v.resources | nindent 12 }}
          securityContext:
            {{- toYaml $v.securityContext | nindent 12 }}
          volumeMounts:
            # The root filesystem is read-only; /tmp is the one scratch directory.
            - name: tmp
              mountPath: /tmp
            {{- include "ragfleet-common.serviceCredentialVolumeMounts" $root | nindent 12 }}
            {{- with .volumeMounts }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
            {{- if $stateful }}
            - name: data
              mountPath: {{ $v.persistence.mountPath }}
            {{- end }}
            {{- with $v.extraVolumeMounts }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
      volumes:
        - name: tmp
          emptyDir:
            sizeLimit: {{ $v.tmpSizeLimit }}
        {{- include "ragfleet-common.serviceCredentialVolumes" $root | nindent 8 }}
        {{- with .volumes }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
        {{- if and $stateful (not $v.persistence.enabled) }}
        - name: data
          emptyDir: {}
        {{- end }}
        {{- with $v.extraVolumes }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
  {{- if and $stateful $v.persistence.enabled }}
  volumeClaimTemplates:
    - metadata:
        name: data
        labels:
          {{- include "ragfleet-common.selectorLabels" $root | nindent 10 }}
      spec:
        accessModes:
          {{- toYaml $v.persistence.accessModes | nindent 10 }}
        {{- with $v.persistence.storageClass }}
        storageClassName: {{ . | quote }}
        {{- end }}
        resources:
          requests:
            storage: {{ $v.persistence.size }}
  {{- end }}
{{- end -}}
