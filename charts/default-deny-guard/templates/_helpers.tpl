{{/*
=== Names and labels ===

The chart has two components: the webhook (`app.kubernetes.io/component: webhook`), whose objects are named
`<fullname>`, and the reconciler (`component: reconciler`), whose objects are named `<fullname>-reconciler`. Pass
the component to "default-deny-guard.labels" / "default-deny-guard.selectorLabels" as
(dict "context" $ "component" "reconciler"), or use the shorthands below.
*/}}

{{- define "default-deny-guard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "default-deny-guard.fullname" -}}
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

{{- define "default-deny-guard.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: stable across upgrades (no version), and per component. Takes (dict "context" $ "component" "webhook"). */}}
{{- define "default-deny-guard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "default-deny-guard.name" .context }}
app.kubernetes.io/instance: {{ .context.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Labels of every object of a component. Takes (dict "context" $ "component" "webhook"). */}}
{{- define "default-deny-guard.labels" -}}
helm.sh/chart: {{ include "default-deny-guard.chart" .context }}
{{ include "default-deny-guard.selectorLabels" . }}
app.kubernetes.io/version: {{ .context.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: default-deny-guard
app.kubernetes.io/managed-by: {{ .context.Release.Service }}
{{- with .context.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Shorthands for the webhook component. */}}
{{- define "default-deny-guard.webhook.labels" -}}
{{ include "default-deny-guard.labels" (dict "context" . "component" "webhook") }}
{{- end }}

{{- define "default-deny-guard.webhook.selectorLabels" -}}
{{ include "default-deny-guard.selectorLabels" (dict "context" . "component" "webhook") }}
{{- end }}

{{/* Shorthands for the reconciler component. */}}
{{- define "default-deny-guard.reconciler.labels" -}}
{{ include "default-deny-guard.labels" (dict "context" . "component" "reconciler") }}
{{- end }}

{{- define "default-deny-guard.reconciler.selectorLabels" -}}
{{ include "default-deny-guard.selectorLabels" (dict "context" . "component" "reconciler") }}
{{- end }}

{{/* `<fullname>-reconciler`, at most 52 characters: a CronJob's name leaves 11 for the Jobs' suffix. */}}
{{- define "default-deny-guard.reconciler.fullname" -}}
{{- printf "%s-reconciler" (include "default-deny-guard.fullname" . | trunc 41 | trimSuffix "-") }}
{{- end }}

{{- define "default-deny-guard.reconciler.serviceAccountName" -}}
{{- if .Values.reconciler.serviceAccount.create }}
{{- default (include "default-deny-guard.reconciler.fullname" .) .Values.reconciler.serviceAccount.name }}
{{- else }}
{{- .Values.reconciler.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "default-deny-guard.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "default-deny-guard.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "default-deny-guard.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/*
=== Modes ===
*/}}

{{/* "true" when the reconciler is deployed (in-cluster mode and `reconciler.enabled`); "" otherwise. */}}
{{- define "default-deny-guard.reconciler.enabled" -}}
{{- if and (include "default-deny-guard.inCluster" .) .Values.reconciler.enabled }}true{{ end }}
{{- end }}

{{/* "true" when the reconciler runs as the long-running controller (health, metrics); "" otherwise. */}}
{{- define "default-deny-guard.reconciler.controller" -}}
{{- if and (include "default-deny-guard.reconciler.enabled" .) (eq .Values.reconciler.mode "controller") }}true{{ end }}
{{- end }}

{{/*
"true" when the chart's NetworkPolicies govern egress: asked for (`networkPolicy.egress.enabled`), or implied because
the reconciler denies egress, and may do so in the release namespace (it is not a system namespace), which would
cut the chart's pods off from the API server.
*/}}
{{- define "default-deny-guard.egressRestricted" -}}
{{- if or .Values.networkPolicy.egress.enabled (and (include "default-deny-guard.reconciler.enabled" .) (contains "Egress" .Values.reconciler.policyTypes)) }}true{{ end }}
{{- end }}

{{/* "true" when the webhook runs in the cluster (the usual case); "" in out-of-cluster mode (`webhook.url`). */}}
{{- define "default-deny-guard.inCluster" -}}
{{- if not .Values.webhook.url }}true{{ end }}
{{- end }}

{{/* How the serving certificate is made: "url" (nothing to make), "cert-manager", "existing-secret" or "self-signed". */}}
{{- define "default-deny-guard.tlsMode" -}}
{{- if .Values.webhook.url }}url
{{- else if .Values.certManager.enabled }}cert-manager
{{- else if .Values.tls.existingSecret }}existing-secret
{{- else }}self-signed
{{- end }}
{{- end }}

{{/* The Secret the pods mount. */}}
{{- define "default-deny-guard.tlsSecretName" -}}
{{- $mode := include "default-deny-guard.tlsMode" . }}
{{- if eq $mode "existing-secret" }}
{{- .Values.tls.existingSecret }}
{{- else if eq $mode "cert-manager" }}
{{- printf "%s-cert-manager-tls" (include "default-deny-guard.fullname" .) }}
{{- else }}
{{- printf "%s-tls" (include "default-deny-guard.fullname" .) }}
{{- end }}
{{- end }}

{{/* The name of cert-manager's Certificate for the serving certificate (cainjector reads the CA from it). */}}
{{- define "default-deny-guard.certificateName" -}}
{{- include "default-deny-guard.fullname" . }}
{{- end }}

{{/* The DNS names the API server may use for the Service: the serving certificate's SANs. */}}
{{- define "default-deny-guard.dnsNames" -}}
{{- $svc := include "default-deny-guard.fullname" . }}
{{- $ns := .Release.Namespace }}
{{- list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.%s" $svc $ns .Values.clusterDomain) | toJson }}
{{- end }}

{{/*
The chart's own CA and serving certificate (self-signed mode), as JSON {"caCert", "cert", "key"} (PEM).

Made once per rendering and shared by every template that needs it (Secret, webhook configurations, the
Deployment's checksum), by keeping it in .Values for the rest of the rendering. On `helm upgrade`, the existing
Secret is read back (`lookup`), so the caBundle and the Secret stay in step across upgrades; `helm template` and
`--dry-run` (no cluster access) make a new pair each time.
*/}}
{{- define "default-deny-guard.selfSignedTLS" -}}
{{- if not (hasKey .Values "__selfSignedTLS") }}
{{- $secretName := include "default-deny-guard.tlsSecretName" . }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace $secretName }}
{{- $data := dict }}
{{- if $existing }}{{ $data = default dict $existing.data }}{{ end }}
{{- $tls := dict }}
{{- if and (index $data "ca.crt") (index $data "tls.crt") (index $data "tls.key") }}
{{- $tls = dict "caCert" (index $data "ca.crt" | b64dec) "cert" (index $data "tls.crt" | b64dec) "key" (index $data "tls.key" | b64dec) }}
{{- else }}
{{- $fullname := include "default-deny-guard.fullname" . }}
{{- $days := int .Values.tls.selfSigned.validityDays }}
{{- $ca := genCA (printf "%s-ca" $fullname) $days }}
{{- $dnsNames := include "default-deny-guard.dnsNames" . | fromJsonArray }}
{{- $cert := genSignedCert (index $dnsNames 2) nil $dnsNames $days $ca }}
{{- $tls = dict "caCert" $ca.Cert "cert" $cert.Cert "key" $cert.Key }}
{{- end }}
{{- $_ := set .Values "__selfSignedTLS" $tls }}
{{- end }}
{{- toJson (get .Values "__selfSignedTLS") }}
{{- end }}

{{/*
The caBundle for the webhook configurations (base64 of PEM), or "" when cert-manager's cainjector fills it.
`webhook.caBundle` may be given as PEM or as base64 of PEM.
*/}}
{{- define "default-deny-guard.caBundle" -}}
{{- $mode := include "default-deny-guard.tlsMode" . }}
{{- if eq $mode "self-signed" }}
{{- (include "default-deny-guard.selfSignedTLS" . | fromJson).caCert | b64enc }}
{{- else if eq $mode "cert-manager" }}
{{- else }}
{{- $given := .Values.webhook.caBundle | trim }}
{{- if hasPrefix "-----BEGIN" $given }}
{{- printf "%s\n" $given | b64enc }}
{{- else }}
{{- $given | nospace }}
{{- end }}
{{- end }}
{{- end }}

{{/*
=== The webhooks' scope ===

The release namespace is exempt from every webhook (in-cluster mode). The webhook's pods run there, so with
`failurePolicy: Fail` a webhook that cannot answer (a NetworkPolicy in that namespace that cuts the API server off
from the pods, a crash loop, an expired certificate) would otherwise refuse the very NetworkPolicy or namespace
change that repairs it. The selector uses `kubernetes.io/metadata.name`,
which the API server sets on every namespace and nobody can change, so no other namespace can claim the exemption.

"default-deny-guard.namespaceSelector" takes (dict "exclude" NAMES "user" SELECTOR): the chart's exemption of NAMES,
ANDed with the user's selector terms.
*/}}
{{- define "default-deny-guard.namespaceSelector" -}}
{{- $exclude := .exclude }}
{{- $user := default dict .user }}
{{- $expressions := list }}
{{- if $exclude }}
{{- $expressions = append $expressions (dict "key" "kubernetes.io/metadata.name" "operator" "NotIn" "values" $exclude) }}
{{- end }}
{{- range (default list $user.matchExpressions) }}
{{- $expressions = append $expressions . }}
{{- end }}
{{- $selector := dict }}
{{- with $user.matchLabels }}{{ $_ := set $selector "matchLabels" . }}{{ end }}
{{- if $expressions }}{{ $_ := set $selector "matchExpressions" $expressions }}{{ end }}
{{- toYaml $selector }}
{{- end }}

{{/* Namespaces exempt from the NetworkPolicy webhook: the release namespace only (R1 must see the system namespaces). */}}
{{- define "default-deny-guard.exemptFromPolicyWebhook" -}}
{{- if include "default-deny-guard.inCluster" . }}{{ list .Release.Namespace | toJson }}{{ else }}[]{{ end }}
{{- end }}

{{/*
Namespaces exempt from the Namespace webhooks: the release namespace and the exact system namespace names (the
server allows their Namespace requests anyway, R4/R5; exempting them keeps them independent of the webhook).
`prefix-*` patterns cannot be written as a label selector: the server still sees those namespaces and allows them.
*/}}
{{- define "default-deny-guard.exemptFromNamespaceWebhooks" -}}
{{- $names := list }}
{{- if include "default-deny-guard.inCluster" . }}{{ $names = append $names .Release.Namespace }}{{ end }}
{{- range .Values.config.systemNamespaces }}
{{- if and (not (hasSuffix "*" .)) (not (has . $names)) }}{{ $names = append $names . }}{{ end }}
{{- end }}
{{- toJson $names }}
{{- end }}

{{/* A webhook's clientConfig, for the path given. Takes (dict "context" $ "path" "/validate"). */}}
{{- define "default-deny-guard.clientConfig" -}}
{{- $ctx := .context }}
{{- if $ctx.Values.webhook.url }}
url: {{ printf "%s%s" (trimSuffix "/" $ctx.Values.webhook.url) .path | quote }}
{{- else }}
service:
  name: {{ include "default-deny-guard.fullname" $ctx }}
  namespace: {{ $ctx.Release.Namespace }}
  path: {{ .path }}
  port: {{ $ctx.Values.service.port }}
{{- end }}
{{- with include "default-deny-guard.caBundle" $ctx }}
caBundle: {{ . }}
{{- end }}
{{- end }}

{{/* Annotations of both webhook configurations. */}}
{{- define "default-deny-guard.webhookAnnotations" -}}
{{- $annotations := deepCopy (default dict .Values.webhook.annotations) }}
{{- if eq (include "default-deny-guard.tlsMode" .) "cert-manager" }}
{{- $_ := set $annotations "cert-manager.io/inject-ca-from" (printf "%s/%s" .Release.Namespace (include "default-deny-guard.certificateName" .)) }}
{{- end }}
{{- with $annotations }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
=== Arguments ===

The rules' flags, from `config`: the very same list for `serve` and `reconcile` (RuleArgs in src/cli.rs), so that the
webhook and the reconciler agree on system namespaces, the enable label and exceptions. `--trusted-deleters` and
`--warn` are `serve`'s alone (`reconcile` accepts and ignores them).
*/}}
{{- define "default-deny-guard.ruleArgs" -}}
- {{ printf "--system-namespaces=%s" (join "," .Values.config.systemNamespaces) | quote }}
{{- with .Values.config.systemNamespaceLabel }}
- {{ printf "--system-namespace-label=%s" . | quote }}
{{- end }}
- {{ printf "--enable-label=%s" .Values.config.enableLabel | quote }}
- {{ printf "--exception-annotation=%s" .Values.config.exceptionAnnotation | quote }}
- {{ printf "--exception-expires-annotation=%s" .Values.config.exceptionExpiresAnnotation | quote }}
{{- end }}

{{/* The API server egress rule of the chart's NetworkPolicies (an item of `egress`). */}}
{{- define "default-deny-guard.apiServerEgress" -}}
- ports:
    {{- range .Values.networkPolicy.egress.apiServerPorts }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
  {{- with .Values.networkPolicy.egress.apiServerTo }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{/*
=== Checks ===

Settings that would deploy something broken fail the rendering, with the reason and the fix.
*/}}
{{- define "default-deny-guard.validate" -}}
{{- $mode := include "default-deny-guard.tlsMode" . }}
{{- if and .Values.webhook.url (not (hasPrefix "https://" .Values.webhook.url)) }}
{{- fail "webhook.url: the API server calls webhooks over HTTPS only; the URL must start with https://" }}
{{- end }}
{{- if and .Values.webhook.url (or .Values.certManager.enabled .Values.tls.existingSecret) }}
{{- fail "webhook.url: out-of-cluster mode deploys no server, so certManager.enabled and tls.existingSecret do not apply; unset them, and give the CA of the external server's certificate in webhook.caBundle" }}
{{- end }}
{{- if and .Values.certManager.enabled .Values.tls.existingSecret }}
{{- fail "certManager.enabled and tls.existingSecret exclude each other: choose who provides the serving certificate" }}
{{- end }}
{{- if and (has $mode (list "url" "existing-secret")) (not .Values.webhook.caBundle) }}
{{- fail (printf "webhook.caBundle is required with %s: the API server must know which CA signed the webhook's certificate (e.g. --set-file webhook.caBundle=ca.crt)" (ternary "webhook.url" "tls.existingSecret" (eq $mode "url"))) }}
{{- end }}
{{- if and .Values.tls.clientCA.pem .Values.tls.clientCA.configMap }}
{{- fail "tls.clientCA: set pem or configMap, not both" }}
{{- end }}
{{- if include "default-deny-guard.inCluster" . }}
{{- $ns := .Release.Namespace }}
{{- range .Values.config.systemNamespaces }}
{{- if or (eq . $ns) (and (hasSuffix "*" .) (hasPrefix (trimSuffix "*" .) $ns)) }}
{{- fail (printf "the release namespace %q is a system namespace (config.systemNamespaces): the webhooks exempt their own namespace so that they can always be repaired, which would leave %s unguarded by R1. Install into a namespace of its own, e.g. `helm install ... -n default-deny-guard --create-namespace`" $ns $ns) }}
{{- end }}
{{- end }}
{{- $pause := ternary (int .Values.preStop.sleepSeconds) 0 .Values.preStop.enabled }}
{{- if lt (int .Values.terminationGracePeriodSeconds) (add $pause (int .Values.config.shutdownTimeoutSeconds)) }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must cover preStop.sleepSeconds (%d) plus config.shutdownTimeoutSeconds (%d), or in-flight requests are cut off" (int .Values.terminationGracePeriodSeconds) $pause (int .Values.config.shutdownTimeoutSeconds)) }}
{{- end }}
{{- if and .Values.podDisruptionBudget.enabled (not .Values.autoscaling.enabled) (le (int .Values.replicaCount) 1) (not (kindIs "invalid" .Values.podDisruptionBudget.minAvailable)) (ge (int .Values.podDisruptionBudget.minAvailable) 1) }}
{{- fail "podDisruptionBudget.minAvailable >= replicaCount: with a single replica no node could ever be drained; use maxUnavailable, or more replicas, or disable the PodDisruptionBudget" }}
{{- end }}
{{- end }}
{{- if include "default-deny-guard.reconciler.enabled" . }}
{{- $r := .Values.reconciler }}
{{- if and (not $r.serviceAccount.create) (not $r.serviceAccount.name) }}
{{- fail "reconciler.serviceAccount.name is required with reconciler.serviceAccount.create=false: name the existing ServiceAccount the reconciler runs as (not the namespace's `default`, whose other users would get write access to NetworkPolicies)" }}
{{- end }}
{{- if eq (include "default-deny-guard.reconciler.serviceAccountName" .) (include "default-deny-guard.serviceAccountName" .) }}
{{- fail (printf "reconciler.serviceAccount: the reconciler and the webhook must not share the ServiceAccount %q: the reconciler's may write NetworkPolicies, the webhook's must not" (include "default-deny-guard.serviceAccountName" .)) }}
{{- end }}
{{- if and $r.backfill (has "R4" .Values.config.warn) }}
{{- fail "reconciler.backfill labels every existing namespace, while R4 is in warn mode (config.warn) so that new namespaces are not labelled yet: finish the roll-out of R4 first, or leave reconciler.backfill false" }}
{{- end }}
{{- if eq (int $r.healthPort) (int $r.metricsPort) }}
{{- fail (printf "reconciler.healthPort and reconciler.metricsPort are both %d: the two servers need a port each" (int $r.healthPort)) }}
{{- end }}
{{- if and (eq $r.mode "controller") (lt (int $r.terminationGracePeriodSeconds) (int $r.shutdownTimeoutSeconds)) }}
{{- fail (printf "reconciler.terminationGracePeriodSeconds (%d) must cover reconciler.shutdownTimeoutSeconds (%d), or running reconciles are cut off" (int $r.terminationGracePeriodSeconds) (int $r.shutdownTimeoutSeconds)) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
How the shutdown pause is taken: "server" (serve's own drain, --shutdown-delay: the default), "preStop" (the
kubelet's sleep action, preStop.by=kubelet), or "" (no pause).
*/}}
{{- define "default-deny-guard.pauseBy" -}}
{{- if .Values.preStop.enabled -}}
{{- ternary "preStop" "server" (eq .Values.preStop.by "kubelet") -}}
{{- end -}}
{{- end }}
