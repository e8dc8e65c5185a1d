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
