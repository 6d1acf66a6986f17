{{/* Names and labels shared by every template. */}}

{{- define "faultlab.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "faultlab.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "faultlab.operatorName" -}}
{{- printf "%s-operator" (include "faultlab.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "faultlab.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "faultlab.operatorName" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Cluster-scoped objects carry the release namespace so two releases never collide. */}}
{{- define "faultlab.clusterRoleName" -}}
{{- printf "%s-%s" (include "faultlab.operatorName" .) .Release.Namespace | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "faultlab.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "faultlab.selectorLabels" -}}
app.kubernetes.io/name: {{ include "faultlab.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "faultlab.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "faultlab.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: faultlab
{{- end -}}

{{/* The operator's RBAC rules, copied from deploy/rbac/ by tools/sync_chart.py. */}}
{{- define "faultlab.rules" -}}
{{- $rules := .Files.Get "files/rbac-rules.yaml" | fromYaml -}}
{{- if or (not $rules) (hasKey $rules "Error") -}}
{{- fail "files/rbac-rules.yaml is missing or invalid: run `python tools/sync_chart.py`" -}}
{{- end -}}
{{- toYaml $rules -}}
{{- end -}}

{{/* Namespaces whose node pods the NetworkPolicy protects. */}}
{{- define "faultlab.policyNamespaces" -}}
{{- $ns := .Values.networkPolicy.namespaces -}}
{{- if not $ns -}}{{- $ns = .Values.watchNamespaces -}}{{- end -}}
{{- if not $ns -}}{{- $ns = list .Release.Namespace -}}{{- end -}}
{{- toYaml (uniq $ns) -}}
{{- end -}}
