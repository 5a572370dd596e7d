{{/*
=== The reconciler's pod ===

One pod template for both modes: the Deployment (`reconciler.mode: controller`) and the CronJob (`cronjob`, one pass
with `--once`: no health or metrics servers, so no ports and no probes). Same image and the same hardened security
contexts as the webhook (`podSecurityContext`, `securityContext`); a ServiceAccount of its own.
*/}}

{{/* The container's arguments: `reconcile`, the rules' flags shared with `serve`, then the reconciler's own. */}}
{{- define "default-deny-guard.reconciler.args" -}}
{{- $r := .Values.reconciler }}
{{- $controller := eq $r.mode "controller" -}}
- reconcile
{{- if not $controller }}
- --once
{{- end }}
{{- if $r.backfill }}
- --backfill
{{- end }}
- --log-format={{ .Values.config.logFormat }}
{{ include "default-deny-guard.ruleArgs" . }}
- --policy-types={{ $r.policyTypes }}
- {{ printf "--dns-namespace-selector=%s" $r.dns.namespaceSelector | quote }}
- {{ printf "--dns-pod-selector=%s" $r.dns.podSelector | quote }}
- --dns-ports={{ join "," $r.dns.ports }}
{{- if $r.audit.enabled }}
- --exceptions-expiring-within={{ $r.audit.exceptionsExpiringWithin }}
- --reports={{ $r.audit.reports | default (list "none") | join "," }}
{{- else }}
- --audit=false
{{- end }}
{{- if $controller }}
- --health-addr={{ .Values.webhook.bindAddress }}:{{ $r.healthPort }}
- --metrics-addr={{ .Values.webhook.bindAddress }}:{{ $r.metricsPort }}
- --resync-interval={{ $r.resyncInterval }}
{{- end }}
- --concurrency={{ $r.concurrency }}
- --reconcile-timeout={{ $r.reconcileTimeout }}
{{- if $controller }}
- --shutdown-timeout={{ $r.shutdownTimeoutSeconds }}s
{{- end }}
{{- range $r.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}

{{/* The pod template (metadata and spec), for the Deployment and the CronJob's Job. */}}
{{- define "default-deny-guard.reconciler.podTemplate" -}}
{{- $r := .Values.reconciler }}
{{- $controller := eq $r.mode "controller" -}}
metadata:
  {{- with $r.podAnnotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  labels:
    {{- include "default-deny-guard.reconciler.labels" . | nindent 4 }}
    {{- with $r.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "default-deny-guard.reconciler.serviceAccountName" . }}
  # The reconciler watches and writes through the API server: it needs the token (the ServiceAccount does not
  # mount it by default).
  automountServiceAccountToken: true
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $r.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  {{- with .Values.podSecurityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if $controller }}
  terminationGracePeriodSeconds: {{ $r.terminationGracePeriodSeconds }}
  {{- else }}
  # One pass, then exit: the Job's status is the result (0 all protected or exempt and no audit finding, 1 some
  # unprotected or a finding, 2 API errors).
  restartPolicy: Never
  {{- end }}
  containers:
    - name: reconciler
      image: {{ include "default-deny-guard.image" . }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      args:
        {{- include "default-deny-guard.reconciler.args" . | nindent 8 }}
      {{- with $r.extraEnv }}
      env:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- if $controller }}
      ports:
        - name: health
          containerPort: {{ $r.healthPort }}
          protocol: TCP
        - name: metrics
          containerPort: {{ $r.metricsPort }}
          protocol: TCP
      {{- with $r.startupProbe }}
      startupProbe:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $r.livenessProbe }}
      livenessProbe:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $r.readinessProbe }}
      readinessProbe:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- end }}
      {{- with $r.resources }}
      resources:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.securityContext }}
      securityContext:
        {{- toYaml . | nindent 8 }}
      {{- end }}
  {{- with $r.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $r.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $r.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $r.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
