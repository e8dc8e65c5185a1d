{{- define "refinery.scaleTargetRef" -}}
{{- if .Values.multiNode.enabled }}
apiVersion: leaderworkerset.x-k8s.io/v1
kind: LeaderWorkerSet
{{- else }}
apiVersion: apps/v1
kind: Deployment
{{- end }}
name: {{ include "refinery.fullname" . }}
{{- end }}

{{/*
Engine queue depth of this release: requests (plain and strategy sub-requests alike) admitted
by vLLM but not yet scheduled.
*/}}
{{- define "refinery.queueDepthQuery" -}}
{{- default (printf "sum(vllm:num_requests_waiting{%s})" (include "refinery.promSelector" .)) .Values.autoscaling.keda.query }}
{{- end }}

{{/*
Admission load of this release in replicas' worth: the engine sequences its admitted requests
hold over one replica's admission bound (a strategy request counts its whole sample budget once
admitted). With AverageValue and threshold targetAdmissionUtilization, KEDA runs
ceil(load / utilisation) replicas. The bound is clamped to 1 for a pod still loading (0).
*/}}
{{- define "refinery.admissionQuery" -}}
{{- $sel := include "refinery.promSelector" . }}
{{- default (printf "sum(refinery_outstanding_sequences{%s}) / clamp_min(max(refinery_outstanding_sequences_limit{%s}), 1)" $sel $sel) .Values.autoscaling.keda.query }}
{{- end }}

{{/*
The autoscaling trigger: (query, target per replica, prometheus-adapter metric name) for
autoscaling.metric.
*/}}
{{- define "refinery.scalingQuery" -}}
{{- if eq .Values.autoscaling.metric "admission" }}{{ include "refinery.admissionQuery" . }}{{ else }}{{ include "refinery.queueDepthQuery" . }}{{ end }}
{{- end }}

{{- define "refinery.scalingTarget" -}}
{{- if eq .Values.autoscaling.metric "admission" }}{{ .Values.autoscaling.targetAdmissionUtilization }}{{ else }}{{ .Values.autoscaling.targetQueueDepth }}{{ end }}
{{- end }}

{{- define "refinery.scalingMetricName" -}}
{{- if eq .Values.autoscaling.metric "admission" }}{{ .Values.autoscaling.hpa.admissionMetricName }}{{ else }}{{ .Values.autoscaling.hpa.metricName }}{{ end }}
{{- end }}
