{{/* The name of every object: the release's. */}}
{{- define "energy-agent.name" -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "energy-agent.selectorLabels" -}}
app.kubernetes.io/name: energy-agent
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "energy-agent.labels" -}}
{{ include "energy-agent.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/component: node-agent
{{- end -}}

{{- define "energy-agent.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "energy-agent.name" .) -}}
{{- else -}}
{{- .Values.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}
