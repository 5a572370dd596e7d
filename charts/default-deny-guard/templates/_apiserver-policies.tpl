{{/*
=== In-API-server policies (templates/apiserver-policies.yaml) ===

apiserver-policies.yaml is generated from src/policies/ (the output of `default-deny-guard policies` with
placeholders); these helpers turn the chart's values into the settings it reads, written as the binary writes them
(JSON literals, system names sorted), so that the chart renders exactly what `policies` prints for the same flags.
*/}}

{{/* "true" when the policies are rendered: apiserverPolicies.enabled, or when it is null, whether the cluster
serves admissionregistration.k8s.io/v1 ValidatingAdmissionPolicy (Kubernetes 1.30+). */}}
{{- define "default-deny-guard.apiserverPolicies.enabled" -}}
{{- $e := .Values.apiserverPolicies.enabled }}
{{- if kindIs "invalid" $e }}
{{- ternary "true" "" (.Capabilities.APIVersions.Has "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy") }}
{{- else }}
{{- ternary "true" "" $e }}
{{- end }}
{{- end }}

{{/* The rules in warn mode, upper case, as a JSON list. */}}
{{- define "default-deny-guard.policies.warnList" -}}
{{- $w := list }}
{{- range .Values.config.warn }}{{ $w = append $w (upper (trim .)) }}{{ end }}
{{- toJson $w }}
{{- end }}

{{/* The MutatingAdmissionPolicy's version: v1 from Kubernetes 1.36, v1beta1 on 1.34/1.35 when the cluster serves it
(a feature gate there); empty (none) otherwise, and when R4 is in warn mode (a MutatingAdmissionPolicy cannot warn). */}}
{{- define "default-deny-guard.policies.mapVersion" -}}
{{- if not (has "R4" (include "default-deny-guard.policies.warnList" . | fromJsonArray)) }}
{{- if semverCompare ">=1.36-0" .Capabilities.KubeVersion.Version }}v1
{{- else if and (semverCompare ">=1.34-0" .Capabilities.KubeVersion.Version) (.Capabilities.APIVersions.Has "admissionregistration.k8s.io/v1beta1/MutatingAdmissionPolicy") }}v1beta1
{{- end }}
{{- end }}
{{- end }}

{{/* A rule's validationActions beside the webhook: Deny, or Audit only in warn mode (the webhook prints the
warning, once). Takes (dict "context" $ "rule" "R1"). */}}
{{- define "default-deny-guard.policies.actions" -}}
{{- if has .rule (include "default-deny-guard.policies.warnList" .context | fromJsonArray) }}["Audit"]{{ else }}["Deny"]{{ end }}
{{- end }}

{{/* Whether a rule is in warn mode, as a CEL literal. Takes (dict "context" $ "rule" "R1"). */}}
{{- define "default-deny-guard.policies.warned" -}}
{{- has .rule (include "default-deny-guard.policies.warnList" .context | fromJsonArray) | toString }}
{{- end }}

{{/* The bindings' namespaceSelector: the release namespace stays exempt, as from the webhooks. */}}
{{- define "default-deny-guard.policies.namespaceSelector" -}}
{{- $exempt := include "default-deny-guard.exemptFromPolicyWebhook" . | fromJsonArray }}
{{- if $exempt }}
{{- dict "matchExpressions" (list (dict "key" "kubernetes.io/metadata.name" "operator" "NotIn" "values" $exempt)) | toJson }}
{{- else }}{}{{ end }}
{{- end }}

{{/* One setting as a JSON literal. Takes (dict "context" $ "name" "systemNames"). */}}
{{- define "default-deny-guard.policies.setting" -}}
{{- $c := .context.Values.config }}
{{- $names := list }}
{{- $prefixes := list }}
{{- range $c.systemNamespaces }}
{{- $n := trim . }}
{{- if hasSuffix "*" $n }}{{ $prefixes = append $prefixes (trimSuffix "*" $n) }}{{ else if $n }}{{ $names = append $names $n }}{{ end }}
{{- end }}
{{- $enable := regexSplit "=" $c.enableLabel 2 }}
{{- if eq .name "systemNames" }}{{ $names | uniq | sortAlpha | toJson }}
{{- else if eq .name "systemPrefixes" }}{{ $prefixes | uniq | sortAlpha | toJson }}
{{- else if eq .name "systemLabel" }}
{{- $l := trim $c.systemNamespaceLabel }}
{{- if not $l }}[]
{{- else if contains "=" $l }}{{ $kv := regexSplit "=" $l 2 }}{{ list (trim (index $kv 0)) (trim (index $kv 1)) | toJson }}
{{- else }}{{ list $l | toJson }}
{{- end }}
{{- else if eq .name "enableKey" }}{{ index $enable 0 | trim | toJson }}
{{- else if eq .name "enableValue" }}{{ index $enable 1 | trim | toJson }}
{{- else if eq .name "exceptionKey" }}{{ $c.exceptionAnnotation | toJson }}
{{- else if eq .name "expiresKey" }}{{ $c.exceptionExpiresAnnotation | toJson }}
{{- else if eq .name "trustedDeleters" }}
{{- $users := list }}
{{- range $c.trustedDeleters }}{{ if trim . }}{{ $users = append $users (trim .) }}{{ end }}{{ end }}
{{- toJson $users }}
{{- else }}{{ fail (printf "unknown policy setting %s" .name) }}
{{- end }}
{{- end }}

{{/* The validating webhooks' failurePolicy: as set, or (empty) Ignore when the policies hold R1, R2, R3 and R5 in the
API server, Fail otherwise. */}}
{{- define "default-deny-guard.validatingFailurePolicy" -}}
{{- .Values.webhook.validating.failurePolicy | default (ternary "Ignore" "Fail" (eq (include "default-deny-guard.apiserverPolicies.enabled" .) "true")) }}
{{- end }}

{{/* A webhook's matchConditions: the chart's own (webhook.matchConditions.enabled), so that the
API server calls the webhook only for requests that can matter, then the user's. Takes (dict "context" $ "webhook"
"networkpolicies" "user" LIST). Renders nothing when there are none. */}}
{{- define "default-deny-guard.webhookMatchConditions" -}}
{{- $ctx := .context }}
{{- $conditions := list }}
{{- if $ctx.Values.webhook.matchConditions.enabled }}
{{- $conditions = include (printf "default-deny-guard.policies.matchConditions.%s" .webhook) $ctx | fromYamlArray }}
{{- end }}
{{- $conditions = concat $conditions .user }}
{{- with $conditions }}
matchConditions:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
