{{/*
The fleet's service credential: one Secret shared by every service of a release, mounted as a
file into each service's pods and named by RAGFLEET_<SERVICE>_SERVICE_CREDENTIAL_FILE. Internal
services accept only calls that carry it; the gateway sends it (docs/security.md).

Values, under `global.serviceCredential` so that every chart of a release sees the same ones:
  existingSecret  a Secret (in the release's namespace) holding the credential under `key`
  key             the Secret's key (default "credential")
  create          the umbrella chart (helm/ragfleet) creates <release>-service-credential with a
                  random value, kept across upgrades; a service chart installed on its own needs
                  existingSecret
*/}}

{{- define "ragfleet-common.serviceCredentialDir" -}}
/etc/ragfleet/service-credential
{{- end -}}

{{/* The credential's key in its Secret, which is also the mounted file's name. Takes $. */}}
{{- define "ragfleet-common.serviceCredentialKey" -}}
{{- dig "serviceCredential" "key" "" .Values.global | default "credential" -}}
{{- end -}}

{{/* Name of the Secret the services read the credential from; fails when there is none. Takes $. */}}
{{- define "ragfleet-common.serviceCredentialSecretName" -}}
{{- $credential := dig "serviceCredential" dict .Values.global -}}
{{- if $credential.existingSecret -}}
{{- $credential.existingSecret -}}
{{- else if $credential.create -}}
{{- printf "%s-service-credential" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- fail (printf "%s: the fleet's service credential is not configured: set global.serviceCredential.existingSecret to a Secret shared by all ragfleet services (key global.serviceCredential.key), or install through the umbrella chart helm/ragfleet with global.serviceCredential.create=true" .Chart.Name) -}}
{{- end -}}
{{- end -}}

{{/*
The Secret itself, when global.serviceCredential.create is set and no existingSecret is given.
Rendered once per release, by the umbrella chart. The value is random on install and read back
with `lookup` on upgrade, so it stays the same (helm template, having no cluster, always shows a
new one). Takes $.
*/}}
{{- define "ragfleet-common.serviceCredentialSecret" -}}
{{- $credential := dig "serviceCredential" dict .Values.global -}}
{{- if and $credential.create (not $credential.existingSecret) -}}
{{- $name := include "ragfleet-common.serviceCredentialSecretName" . -}}
{{- $key := include "ragfleet-common.serviceCredentialKey" . -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace $name -}}
{{- $value := dig "data" $key "" $existing -}}
{{- if not $value -}}
{{- $value = randAlphaNum 48 | b64enc -}}
{{- end -}}
apiVersion: v1
kind: Secret
metadata:
  name: {{ $name }}
  namespace: {{ .Release.Namespace }}
  labels:
    {{- include "ragfleet-common.labels" . | nindent 4 }}
type: Opaque
data:
  {{ $key }}: {{ $value }}
{{- end -}}
{{- end -}}

{{/* The pod volume of the credential (a list with one entry). Takes $. */}}
{{- define "ragfleet-common.serviceCredentialVolumes" -}}
- name: service-credential
  secret:
    secretName: {{ include "ragfleet-common.serviceCredentialSecretName" . }}
    items:
      - key: {{ include "ragfleet-common.serviceCredentialKey" . }}
        path: {{ include "ragfleet-common.serviceCredentialKey" . }}
    defaultMode: 0444
{{- end -}}

{{/* The container's mount of it (a list with one entry). */}}
{{- define "ragfleet-common.serviceCredentialVolumeMounts" -}}
- name: service-credential
  mountPath: {{ include "ragfleet-common.serviceCredentialDir" . }}
  readOnly: true
{{- end -}}

{{/* RAGFLEET_<SERVICE>_SERVICE_CREDENTIAL_FILE (a list with one entry). dict: root, envPrefix */}}
{{- define "ragfleet-common.serviceCredentialEnv" -}}
- name: {{ .envPrefix }}SERVICE_CREDENTIAL_FILE
  value: {{ printf "%s/%s" (include "ragfleet-common.serviceCredentialDir" .root) (include "ragfleet-common.serviceCredentialKey" .root) }}
{{- end -}}
