{{/*
The chart name, at most 63 characters.
*/}}
{{- define "shadowkeep.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name of the release's objects: the release name when it already contains the chart
name, else "<release>-<chart>"; at most 63 characters.
*/}}
{{- define "shadowkeep.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "shadowkeep.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every object.
*/}}
{{- define "shadowkeep.labels" -}}
helm.sh/chart: {{ include "shadowkeep.chart" . }}
{{ include "shadowkeep.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: shadowkeep
{{- end }}

{{/*
Labels that select the operator pods.
*/}}
{{- define "shadowkeep.selectorLabels" -}}
app.kubernetes.io/name: {{ include "shadowkeep.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/*
The operator's ServiceAccount name.
*/}}
{{- define "shadowkeep.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "shadowkeep.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The operator image, "repository:tag"; the tag defaults to the chart's appVersion.
*/}}
{{- define "shadowkeep.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag | toString) }}
{{- end }}

{{/*
The one namespace the operator watches, or "" for all. The binary takes one --namespace,
so a list of more than one fails the render.
*/}}
{{- define "shadowkeep.watchNamespace" -}}
{{- $ns := .Values.watchNamespaces | default list }}
{{- if kindIs "string" $ns }}
{{- $ns = list $ns }}
{{- end }}
{{- if gt (len $ns) 1 }}
{{- fail (printf "watchNamespaces: only one namespace is supported for now (the operator takes a single --namespace); got %d: %s" (len $ns) (join ", " $ns)) }}
{{- end }}
{{- if eq (len $ns) 1 }}
{{- first $ns }}
{{- end }}
{{- end }}

{{/*
The rules the operator needs on the namespaced resources it watches and manages, for the
ClusterRole (all namespaces) or the Role (one namespace). Leases are separate (leader
election, release namespace only).
*/}}
{{- define "shadowkeep.rules" -}}
- apiGroups: ["shadowkeep.io"]
  resources: ["keymanagers", "drivetables", "keygroups", "shadows", "gitsources"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["shadowkeep.io"]
  resources: ["keymanagers/status", "drivetables/status", "keygroups/status", "shadows/status", "gitsources/status"]
  verbs: ["get", "patch", "update"]
{{- /* Git sync (GitSource) applies the objects of a branch with server-side apply and
prunes those removed from it, except KeyManagers: sync never deletes one, and cannot. */}}
- apiGroups: ["shadowkeep.io"]
  resources: ["keymanagers"]
  verbs: ["create", "patch"]
- apiGroups: ["shadowkeep.io"]
  resources: ["drivetables", "keygroups", "shadows"]
  verbs: ["create", "patch", "delete"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create", "patch"]
{{- /* ConfigMaps also: update (each KeyManager's drive history, with a resourceVersion
precondition; a move marks the old KeyManager's history too). */}}
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "list", "watch", "create", "patch", "update"]
{{- /* Secrets also: update (the canonical keystore, with a resourceVersion precondition)
and delete (keystore backups beyond the KeyManager's retention). */}}
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["apps"]
  resources: ["statefulsets"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch"]
{{- /* Replica certificates of KeyManagers with spec.tls.source CertManager. */}}
- apiGroups: ["cert-manager.io"]
  resources: ["certificates"]
  verbs: ["get", "create", "patch"]
{{- end }}
