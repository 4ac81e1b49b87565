{{/* The chart name, at most 63 characters. */}}
{{- define "canaryd.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The resource name prefix: the release name, plus the chart name unless it is in it. */}}
{{- define "canaryd.fullname" -}}
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

{{- define "canaryd.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "canaryd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "canaryd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "canaryd.labels" -}}
helm.sh/chart: {{ include "canaryd.chart" . }}
{{ include "canaryd.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: canaryd
{{- end }}

{{- define "canaryd.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "canaryd.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The admin Service: CANARYD_URL of pipelines and canaryctl. */}}
{{- define "canaryd.adminServiceName" -}}
{{- printf "%s-admin" (include "canaryd.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The Secret holding the API tokens file (key `tokens`). */}}
{{- define "canaryd.tokensSecretName" -}}
{{- if .Values.adminTokens.existingSecret }}
{{- .Values.adminTokens.existingSecret }}
{{- else }}
{{- printf "%s-tokens" (include "canaryd.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* Paths inside the container. */}}
{{- define "canaryd.configPath" -}}/etc/canaryd/canaryd.yaml{{- end }}
{{- define "canaryd.tokensDir" -}}/var/run/secrets/canaryd/tokens{{- end }}
{{- define "canaryd.tlsDir" -}}/var/run/secrets/canaryd/tls{{- end }}
{{- define "canaryd.stateDir" -}}/var/lib/canaryd{{- end }}

{{/*
canaryd.yaml: the user's `config` with the keys the chart owns (listen, admin, state,
kubernetes, and tls.certificates from https.certificates) written over it.
*/}}
{{- define "canaryd.config" -}}
{{- $cfg := deepCopy .Values.config }}
{{- $listen := dict "http" (printf "0.0.0.0:%d" (int .Values.ports.http)) }}
{{- if .Values.https.enabled }}
{{- $_ := set $listen "https" (printf "0.0.0.0:%d" (int .Values.ports.https)) }}
{{- $tls := deepCopy (default (dict) $cfg.tls) }}
{{- $certs := list }}
{{- range (default (list) $tls.certificates) }}
{{- $certs = append $certs . }}
{{- end }}
{{- range .Values.https.certificates }}
{{- $dir := printf "%s/%s" (include "canaryd.tlsDir" $) .secretName }}
{{- $certs = append $certs (dict "hosts" .hosts "cert" (printf "%s/tls.crt" $dir) "key" (printf "%s/tls.key" $dir)) }}
{{- end }}
{{- $_ := set $tls "certificates" $certs }}
{{- $secrets := list }}
{{- range (default (list) $tls.secrets) }}
{{- $secrets = append $secrets . }}
{{- end }}
{{- range .Values.https.secrets }}
{{- $secrets = append $secrets (dict "secret" .secret "hosts" .hosts) }}
{{- end }}
{{- if $secrets }}
{{- $_ := set $tls "secrets" $secrets }}
{{- end }}
{{- $_ := set $tls "unknown_sni" .Values.https.unknownSni }}
{{- $_ := set $cfg "tls" $tls }}
{{- end }}
{{- $_ := set $cfg "listen" $listen }}
{{- $_ := set $cfg "admin" (dict "listen" (printf "0.0.0.0:%d" (int .Values.ports.admin)) "tokens_file" (printf "%s/tokens" (include "canaryd.tokensDir" .))) }}
{{- $_ := set $cfg "state" (dict "path" (printf "%s/state.json" (include "canaryd.stateDir" .))) }}
{{- $k := dict "namespace" .Release.Namespace "canary_routes" .Values.kubernetes.canaryRoutes "lease_name" (printf "%s-leader" (include "canaryd.fullname" .)) "lease_duration" .Values.kubernetes.leaseDuration }}
{{- if .Values.ingressClass.enabled }}
{{- $_ := set $k "ingress_class" .Values.ingressClass.name }}
{{- else }}
{{- $_ := set $k "ingress_class" nil }}
{{- end }}
{{- if .Values.kubernetes.watchNamespace }}
{{- $_ := set $k "watch_namespace" .Values.kubernetes.watchNamespace }}
{{- end }}
{{- if and .Values.kubernetes.publishService .Values.ingressClass.enabled }}
{{- $_ := set $k "publish_service" (printf "%s/%s" .Release.Namespace (include "canaryd.fullname" .)) }}
{{- end }}
{{- $_ := set $cfg "kubernetes" $k }}
{{- toYaml $cfg }}
{{- end }}

{{/* NAMESPACE → sorted Secret names canaryd reads by name (https.secrets and https.ingressSecrets). */}}
{{- define "canaryd.tlsSecretsByNamespace" -}}
{{- $byNs := dict }}
{{- if .Values.https.enabled }}
{{- $all := list }}
{{- range .Values.https.secrets }}{{- $all = append $all .secret }}{{- end }}
{{- range .Values.https.ingressSecrets }}{{- $all = append $all . }}{{- end }}
{{- range $all }}
{{- $parts := splitn "/" 2 . }}
{{- $names := default (list) (get $byNs $parts._0) }}
{{- $_ := set $byNs $parts._0 (append $names $parts._1 | uniq | sortAlpha) }}
{{- end }}
{{- end }}
{{- toJson $byNs }}
{{- end }}
