{{/*
The pod template shared by the Deployment (one pod per replica) and the LeaderWorkerSet
(leader and workers of a multi-node group). Called with (dict "root" $ "role" ROLE), ROLE one of
"server" (single node), "leader" or "worker".
*/}}

{{- define "refinery.env" -}}
{{- $v := .Values }}
- name: REFINERY_HOST
  value: "0.0.0.0"
- name: REFINERY_PORT
  value: {{ $v.refinery.port | quote }}
- name: REFINERY_DRAIN_TIMEOUT
  value: {{ $v.refinery.drainTimeoutSeconds | quote }}
- name: REFINERY_MAX_SAMPLES
  value: {{ $v.refinery.maxSamples | quote }}
- name: REFINERY_REQUEST_TIMEOUT
  value: {{ $v.refinery.requestTimeoutSeconds | quote }}
- name: REFINERY_QUEUE_FACTOR
  value: {{ $v.refinery.admission.queueFactor | quote }}
{{- with $v.refinery.admission.maxOutstandingSequences }}
- name: REFINERY_MAX_OUTSTANDING_SEQUENCES
  value: {{ . | quote }}
{{- end }}
{{- with $v.model.servedModelName }}
- name: REFINERY_SERVED_MODEL_NAME
  value: {{ . | quote }}
{{- end }}
{{- if include "refinery.apiKeysEnabled" . }}
# The keys are a file from the Secret (never an environment variable, which every process of
# the pod inherits and `kubectl describe` tools show); a rotated Secret is re-read in place.
- name: REFINERY_API_KEYS_FILE
  value: {{ printf "%s/%s" (include "refinery.apiKeysMountPath" .) $v.refinery.apiKeys.secretKey | quote }}
{{- end }}
{{- with $v.model.hfToken.secretName }}
- name: HF_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $v.model.hfToken.secretKey }}
{{- end }}
{{- if include "refinery.gatewayMode" . }}
{{- if ne $v.model.source "embedded" }}
{{- fail "mode=gateway loads no model: leave model.source at embedded (the backend serves the model)" }}
{{- end }}
- name: REFINERY_BACKEND
  value: {{ required "mode=gateway needs gateway.backend (the backend's OpenAI base URL)" $v.gateway.backend | quote }}
- name: REFINERY_BACKEND_SESSION_HEADER
  value: {{ $v.gateway.sessionHeader | quote }}
- name: REFINERY_BACKEND_TIMEOUT
  value: {{ $v.gateway.timeoutSeconds | quote }}
- name: REFINERY_BACKEND_PRIORITY
  value: {{ $v.gateway.sendPriority | quote }}
- name: REFINERY_BACKEND_KIND
  value: {{ $v.gateway.backendKind | default "auto" | quote }}
{{- with $v.gateway.apiKey.secretName }}
- name: REFINERY_BACKEND_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $v.gateway.apiKey.secretKey }}
{{- end }}
{{- end }}
- name: HF_HUB_OFFLINE
  value: {{ ternary "0" "1" (eq $v.model.source "hub") | quote }}
{{- with $v.env }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "refinery.apiKeysMountPath" -}}/etc/refinery/api-keys{{- end }}

{{/* "true" in gateway mode (no engine in the pod: values.yaml `mode`), else empty. */}}
{{- define "refinery.gatewayMode" -}}
{{- if eq (.Values.mode | default "server") "gateway" }}true{{ end }}
{{- end }}

{{- define "refinery.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if include "refinery.apiKeysEnabled" . }}
- name: api-keys
  mountPath: {{ include "refinery.apiKeysMountPath" . }}
  readOnly: true
{{- end }}
- name: cache
  mountPath: {{ .Values.cache.mountPath }}
{{- if and .Values.shm.enabled (not (include "refinery.gatewayMode" .)) }}
- name: dshm
  mountPath: /dev/shm
{{- end }}
{{- if eq .Values.model.source "pvc" }}
- name: models
  mountPath: /models
  readOnly: true
{{- end }}
{{- with .Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "refinery.volumes" -}}
- name: tmp
  emptyDir: {}
{{- if include "refinery.apiKeysEnabled" . }}
- name: api-keys
  secret:
    secretName: {{ include "refinery.apiKeysSecretName" . }}
    defaultMode: 0440
    items:
      - key: {{ .Values.refinery.apiKeys.secretKey }}
        path: {{ .Values.refinery.apiKeys.secretKey }}
{{- end }}
- name: cache
{{- if .Values.cache.existingClaim }}
  persistentVolumeClaim:
    claimName: {{ .Values.cache.existingClaim }}
{{- else if .Values.cache.sizeLimit }}
  emptyDir:
    sizeLimit: {{ .Values.cache.sizeLimit }}
{{- else }}
  emptyDir: {}
{{- end }}
{{- if and .Values.shm.enabled (not (include "refinery.gatewayMode" .)) }}
- name: dshm
  emptyDir:
    medium: Memory
    {{- with .Values.shm.sizeLimit }}
    sizeLimit: {{ . }}
    {{- end }}
{{- end }}
{{- if eq .Values.model.source "pvc" }}
- name: models
  persistentVolumeClaim:
    claimName: {{ .Values.model.pvc.claimName }}
    readOnly: true
{{- end }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "refinery.resources" -}}
{{- if include "refinery.gatewayMode" . }}
{{- toYaml (.Values.gateway.resources | default dict) }}
{{- else }}
{{- $resources := deepCopy (.Values.resources | default dict) }}
{{- if gt (.Values.gpu.count | int) 0 }}
{{- $limits := get $resources "limits" | default dict }}
{{- $_ := set $limits .Values.gpu.resource (.Values.gpu.count | int) }}
{{- $_ := set $resources "limits" $limits }}
{{- end }}
{{- toYaml $resources }}
{{- end }}
{{- end }}

{{- define "refinery.probes" -}}
{{- $p := .Values.probes }}
startupProbe:
  httpGet:
    path: /ready
    port: http
  periodSeconds: {{ $p.startup.periodSeconds }}
  timeoutSeconds: {{ $p.startup.timeoutSeconds }}
  # The model-load budget: {{ $p.startup.modelLoadBudgetSeconds }} s.
  failureThreshold: {{ div (add $p.startup.modelLoadBudgetSeconds $p.startup.periodSeconds -1) $p.startup.periodSeconds }}
readinessProbe:
  httpGet:
    path: /ready
    port: http
  periodSeconds: {{ $p.readiness.periodSeconds }}
  timeoutSeconds: {{ $p.readiness.timeoutSeconds }}
  failureThreshold: {{ $p.readiness.failureThreshold }}
livenessProbe:
  httpGet:
    path: /health
    port: http
  periodSeconds: {{ $p.liveness.periodSeconds }}
  timeoutSeconds: {{ $p.liveness.timeoutSeconds }}
  failureThreshold: {{ $p.liveness.failureThreshold }}
{{- end }}

{{- define "refinery.podSpec" -}}
{{- $root := .root }}
{{- $v := $root.Values }}
{{- $role := .role }}
{{- with $v.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
serviceAccountName: {{ include "refinery.serviceAccountName" $root }}
automountServiceAccountToken: {{ $v.serviceAccount.automountToken }}
# Service links would put REFINERY_PORT=tcp://… (and similar) into the environment.
enableServiceLinks: false
{{- with $v.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
securityContext:
  {{- toYaml $v.podSecurityContext | nindent 2 }}
terminationGracePeriodSeconds: {{ include "refinery.terminationGracePeriodSeconds" $root }}
containers:
  - name: {{ ternary "ray-worker" "refinery" (eq $role "worker") }}
    image: {{ include "refinery.image" $root | quote }}
    imagePullPolicy: {{ $v.image.pullPolicy }}
    {{- $serveArgs := include "refinery.serveArgs" $root | fromYamlArray }}
    {{- if eq $role "server" }}
    command: ["refinery", "serve"]
    {{- with $serveArgs }}
    args:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- else if eq $role "leader" }}
    # vLLM's multi-node recipe: start the Ray head, wait for the group's workers, then serve.
    command:
      - bash
      - -c
      - >-
        bash {{ $v.multiNode.rayScript | squote }} leader
        --ray_port={{ $v.multiNode.rayPort }}
        --ray_cluster_size="${LWS_GROUP_SIZE}"
        --ray_init_timeout={{ $v.multiNode.rayInitTimeoutSeconds }}
        && exec refinery serve "$@"
      - refinery-leader
    {{- with $serveArgs }}
    args:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- else }}
    # vLLM's multi-node recipe: join the leader's Ray cluster and block.
    command:
      - bash
      - -c
      - >-
        exec bash {{ $v.multiNode.rayScript | squote }} worker
        --ray_address="${LWS_LEADER_ADDRESS}"
        --ray_port={{ $v.multiNode.rayPort }}
        --ray_init_timeout={{ $v.multiNode.rayInitTimeoutSeconds }}
    {{- end }}
    {{- if ne $role "worker" }}
    ports:
      - name: http
        containerPort: {{ $v.refinery.port }}
        protocol: TCP
    {{- end }}
    env:
      {{- include "refinery.env" $root | trim | nindent 6 }}
    {{- with $v.envFrom }}
    envFrom:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    resources:
      {{- include "refinery.resources" $root | trim | nindent 6 }}
    volumeMounts:
      {{- include "refinery.volumeMounts" $root | trim | nindent 6 }}
    {{- if ne $role "worker" }}
    {{- include "refinery.probes" $root | trim | nindent 4 }}
    lifecycle:
      preStop:
        # Keep serving while endpoints and load balancers drop this pod; SIGTERM (and the
        # drain) follow.
        exec:
          command: ["sleep", "{{ $v.shutdown.preStopSleepSeconds }}"]
    {{- end }}
    securityContext:
      {{- toYaml $v.securityContext | nindent 6 }}
volumes:
  {{- include "refinery.volumes" $root | trim | nindent 2 }}
{{- with $v.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{- define "refinery.podMetadata" -}}
{{- $root := .root }}
labels:
  {{- include "refinery.selectorLabels" $root | nindent 2 }}
  app.kubernetes.io/component: {{ ternary "ray-worker" "server" (eq .role "worker") }}
  {{- if and $root.Values.inferencePool.enabled (ne .role "worker") }}
  # The llm-d endpoint picker reads vLLM's metric names from pods labelled so.
  llm-d.ai/engine-type: vllm
  {{- end }}
  {{- with $root.Values.podLabels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- if or $root.Values.refinery.apiKeys.keys $root.Values.podAnnotations }}
annotations:
  {{- with $root.Values.refinery.apiKeys.keys }}
  # Roll the pods when the API keys the chart manages change.
  checksum/api-keys: {{ toYaml . | sha256sum }}
  {{- end }}
  {{- with $root.Values.podAnnotations }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}
{{- end }}
