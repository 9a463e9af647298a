{{/* Chart name, truncated to the 63 characters a label allows. */}}
{{- define "datastream.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Prefix of every object name. */}}
{{- define "datastream.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 54 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 54 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 54 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Name of the operator's objects. */}}
{{- define "datastream.operator" -}}
{{- printf "%s-operator" (include "datastream.fullname" .) -}}
{{- end -}}

{{- define "datastream.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "datastream.operator" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "datastream.leaseName" -}}
{{- default (include "datastream.operator" .) .Values.leaderElection.leaseName -}}
{{- end -}}

{{/* Labels selecting the operator pods (stable across upgrades: selectors are immutable). */}}
{{- define "datastream.selectorLabels" -}}
app.kubernetes.io/name: {{ include "datastream.name" . }}-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/*
Labels selecting the operator pods in the chart's newer selectors (PodDisruptionBudget,
NetworkPolicy, topology spread): the selector labels alone also match the `helm test` pod.
*/}}
{{- define "datastream.operatorPodLabels" -}}
{{ include "datastream.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* Labels on every object of the chart. */}}
{{- define "datastream.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "datastream.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: datastream
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* repository@digest when a digest is set (the tag is then ignored), else repository:tag. */}}
{{- define "datastream.image" -}}
{{- if .digest -}}
{{- printf "%s@%s" .repository .digest -}}
{{- else -}}
{{- printf "%s:%s" .repository (default .appVersion .tag) -}}
{{- end -}}
{{- end -}}

{{- define "datastream.operatorImage" -}}
{{- include "datastream.image" (dict "repository" .Values.image.repository "tag" .Values.image.tag "digest" .Values.image.digest "appVersion" .Chart.AppVersion) -}}
{{- end -}}

{{- define "datastream.sidecarImage" -}}
{{- include "datastream.image" (dict "repository" .Values.sidecar.image.repository "tag" .Values.sidecar.image.tag "digest" .Values.sidecar.image.digest "appVersion" .Chart.AppVersion) -}}
{{- end -}}

{{- define "datastream.testImage" -}}
{{- include "datastream.image" (dict "repository" .Values.test.image.repository "tag" .Values.test.image.tag "digest" .Values.test.image.digest "appVersion" .Chart.AppVersion) -}}
{{- end -}}

{{/* The restricted Pod Security Standard, for every container of the chart. */}}
{{- define "datastream.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "datastream.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.runAsUser }}
runAsGroup: {{ .Values.runAsUser }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/*
Refuses a genuine Kubernetes 1.20.0. Chart.yaml's kubeVersion admits ">=1.29.0-0 || 1.20.0":
1.20.0 is the version Helm assumes without a cluster (`helm template`, `--dry-run=client`) when its
binary was built without the Makefile's -X ...chartutil.k8sVersionMajor/Minor flags (`go install`,
programs that embed Helm's Go packages). Offline, Helm's API versions are every one it knows,
policy/v1 included; an API server at 1.20 serves no policy/v1 (GA in 1.21), so it is refused here.
*/}}
{{- define "datastream.checkKubeVersion" -}}
{{- if and (semverCompare "<1.29.0-0" .Capabilities.KubeVersion.Version) (not (.Capabilities.APIVersions.Has "policy/v1")) }}
{{- fail (printf "DataStream needs Kubernetes >= 1.29; this cluster runs %s" .Capabilities.KubeVersion.Version) }}
{{- end }}
{{- end -}}
