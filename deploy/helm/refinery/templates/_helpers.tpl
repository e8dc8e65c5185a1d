{{/*
Names and labels.
*/}}
{{- define "refinery.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "refinery.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "refinery.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "refinery.selectorLabels" -}}
app.kubernetes.io/name: {{ include "refinery.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "refinery.labels" -}}
helm.sh/chart: {{ include "refinery.chart" . }}
{{ include "refinery.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: refinery
{{- end }}

{{- define "refinery.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "refinery.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "refinery.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "refinery.apiKeysSecretName" -}}
{{- default (printf "%s-api-keys" (include "refinery.fullname" .)) .Values.refinery.apiKeys.existingSecret }}
{{- end }}

{{- define "refinery.apiKeysEnabled" -}}
{{- if or .Values.refinery.apiKeys.existingSecret .Values.refinery.apiKeys.keys }}true{{ end }}
{{- end }}

{{/*
PromQL label matchers selecting this release's series, as a ServiceMonitor labels them.
*/}}
{{- define "refinery.promSelector" -}}
{{- if .Values.metrics.selector }}
{{- .Values.metrics.selector }}
{{- else }}
{{- printf "namespace=%q,service=%q" .Release.Namespace (include "refinery.fullname" .) }}
{{- end }}
{{- end }}

{{/*
Shutdown timeline: preStop sleep (endpoints drop the pod), then SIGTERM starts Refinery's drain
(REFINERY_DRAIN_TIMEOUT), then the engine stops. The grace period covers all three.
*/}}
{{- define "refinery.terminationGracePeriodSeconds" -}}
{{- add .Values.shutdown.preStopSleepSeconds .Values.refinery.drainTimeoutSeconds .Values.shutdown.engineShutdownSeconds }}
{{- end }}

{{/*
Checks that no schema can express; each fails the render with a message naming the value.
*/}}
{{- define "refinery.validate" -}}
{{- $m := .Values.model }}
{{- if and (eq $m.source "hub") (not $m.name) }}
{{- fail "model.source=hub needs model.name (a Hugging Face id such as Qwen/Qwen2.5-7B-Instruct)" }}
{{- end }}
{{- if and (eq $m.source "pvc") (not $m.pvc.claimName) }}
{{- fail "model.source=pvc needs model.pvc.claimName" }}
{{- end }}
{{- if and (eq $m.source "embedded") $m.name }}
{{- fail "model.name is set but model.source is embedded: set model.source to hub or pvc" }}
{{- end }}
{{- $e := .Values.engine }}
{{- if .Values.multiNode.enabled }}
{{- $gpus := mul .Values.multiNode.nodes .Values.gpu.count }}
{{- if ne (mul $e.tensorParallelSize $e.pipelineParallelSize | int) ($gpus | int) }}
{{- fail (printf "multiNode: engine.tensorParallelSize × engine.pipelineParallelSize (%d × %d) must equal multiNode.nodes × gpu.count (%d × %d)" ($e.tensorParallelSize | int) ($e.pipelineParallelSize | int) (.Values.multiNode.nodes | int) (.Values.gpu.count | int)) }}
{{- end }}
{{- else if gt (.Values.gpu.count | int) 0 }}
{{- if gt (mul $e.tensorParallelSize $e.pipelineParallelSize | int) (.Values.gpu.count | int) }}
{{- fail (printf "engine.tensorParallelSize × engine.pipelineParallelSize (%d × %d) needs more GPUs than gpu.count (%d); for more than one node set multiNode.enabled" ($e.tensorParallelSize | int) ($e.pipelineParallelSize | int) (.Values.gpu.count | int)) }}
{{- end }}
{{- end }}
{{- if and .Values.autoscaling.enabled (gt (.Values.autoscaling.minReplicas | int) (.Values.autoscaling.maxReplicas | int)) }}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" }}
{{- end }}
{{- end }}

{{/*
`refinery serve` arguments: the model, parallelism, then engine.args (a map) and
engine.extraArgs (a list, verbatim). In engine.args, `true` gives `--flag`, `false` gives
`--no-flag` (vLLM's boolean options accept both), a list gives `--flag v1 v2`, null omits it.
*/}}
{{- define "refinery.serveArgs" -}}
{{- $args := list }}
{{- if eq .Values.model.source "hub" }}
{{- $args = append $args .Values.model.name }}
{{- else if eq .Values.model.source "pvc" }}
{{- $args = append $args (trimSuffix "/" (printf "/models/%s" (.Values.model.pvc.path | default ""))) }}
{{- end }}
{{- if .Values.model.revision }}
{{- $args = concat $args (list "--revision" .Values.model.revision) }}
{{- end }}
{{- if gt (.Values.engine.tensorParallelSize | int) 1 }}
{{- $args = concat $args (list "--tensor-parallel-size" (toString .Values.engine.tensorParallelSize)) }}
{{- end }}
{{- if gt (.Values.engine.pipelineParallelSize | int) 1 }}
{{- $args = concat $args (list "--pipeline-parallel-size" (toString .Values.engine.pipelineParallelSize)) }}
{{- end }}
{{- if .Values.multiNode.enabled }}
{{- $args = concat $args (list "--distributed-executor-backend" "ray") }}
{{- end }}
{{- range $flag, $value := .Values.engine.args }}
{{- if kindIs "bool" $value }}
{{- $args = append $args (printf "--%s%s" (ternary "" "no-" $value) $flag) }}
{{- else if kindIs "slice" $value }}
{{- $args = append $args (printf "--%s" $flag) }}
{{- range $value }}{{ $args = append $args (include "refinery.argString" .) }}{{ end }}
{{- else if not (kindIs "invalid" $value) }}
{{- $args = concat $args (list (printf "--%s" $flag) (include "refinery.argString" $value)) }}
{{- end }}
{{- end }}
{{- range .Values.engine.extraArgs }}
{{- $args = append $args (include "refinery.argString" .) }}
{{- end }}
{{- toYaml $args }}
{{- end }}

{{/*
A value as a command-line word: whole numbers without an exponent (1000000, not 1e+06).
*/}}
{{- define "refinery.argString" -}}
{{- if and (kindIs "float64" .) (eq (floor .) .) }}
{{- int64 . | toString }}
{{- else }}
{{- toString . }}
{{- end }}
{{- end }}

{{/*
llm-d / Gateway API Inference Extension (inferencePool.enabled): names and the pool's selector.
*/}}
{{- define "refinery.inferencePoolName" -}}
{{- include "refinery.fullname" . }}
{{- end }}

{{- define "refinery.endpointPickerName" -}}
{{- printf "%s-epp" (include "refinery.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "refinery.endpointPickerSelectorLabels" -}}
app.kubernetes.io/name: {{ include "refinery.name" . }}-epp
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "refinery.endpointPickerLabels" -}}
helm.sh/chart: {{ include "refinery.chart" . }}
{{ include "refinery.endpointPickerSelectorLabels" . }}
app.kubernetes.io/component: endpoint-picker
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: refinery
{{- end }}

{{/*
The pods the InferencePool routes to: the pods that serve HTTP. Single node: every server pod.
Multi-node: group leaders only (the LWS controller labels leaders worker-index "0"); the Ray
workers serve nothing.
*/}}
{{- define "refinery.poolSelectorLabels" -}}
{{ include "refinery.selectorLabels" . }}
app.kubernetes.io/component: server
{{- if .Values.multiNode.enabled }}
leaderworkerset.sigs.k8s.io/worker-index: "0"
{{- end }}
{{- end }}

{{/*
The endpoint picker's EndpointPickerConfig (llm-d Router). Scoring reads the load each pod
reports on /metrics (every strategy sample counts there), plus prefix-cache locality.
*/}}
{{- define "refinery.endpointPickerConfig" -}}
{{- $p := .Values.inferencePool.endpointPicker }}
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
{{- if $p.flowControl }}
featureGates:
  - flowControl
{{- end }}
plugins:
  - type: queue-scorer
  - type: kv-cache-utilization-scorer
  - type: prefix-cache-scorer
  - type: max-score-picker
  - type: single-profile-handler
  - type: metrics-data-source
    parameters:
      scheme: http
      path: /metrics
  - type: core-metrics-extractor
schedulingProfiles:
  - name: default
    plugins:
      - pluginRef: queue-scorer
        weight: {{ $p.scorers.queue }}
      - pluginRef: kv-cache-utilization-scorer
        weight: {{ $p.scorers.kvCacheUtilization }}
      - pluginRef: prefix-cache-scorer
        weight: {{ $p.scorers.prefixCache }}
      - pluginRef: max-score-picker
dataLayer:
  sources:
    - pluginRef: metrics-data-source
      extractors:
        - pluginRef: core-metrics-extractor
{{- end }}
