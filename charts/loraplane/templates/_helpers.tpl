{{/* Names, labels and the image, shared by every template. */}}

{{- define "loraplane.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "loraplane.fullname" -}}
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

{{- define "loraplane.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The operator's pods carry these whatever the names: its NetworkPolicies select them
     (operator/loraplane/builders/network_policy.py OPERATOR_POD_LABELS). */}}
{{- define "loraplane.selectorLabels" -}}
app.kubernetes.io/name: {{ include "loraplane.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "loraplane.labels" -}}
helm.sh/chart: {{ include "loraplane.chart" . }}
app.kubernetes.io/name: {{ include "loraplane.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: loraplane
{{- end }}

{{- define "loraplane.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "loraplane.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "loraplane.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Every verb on every resource the operator's code uses, and nothing more (the e2e tests
     run the operator under exactly these rules). */}}
{{- define "loraplane.rbacRules" -}}
# Its own kinds: kopf watches them, patches finalizers and annotations, and writes status.
- apiGroups: [loraplane.dev]
  resources: [basemodeldeployments, loraadapters]
  verbs: [get, list, watch, patch]
- apiGroups: [loraplane.dev]
  resources: [basemodeldeployments/status, loraadapters/status]
  verbs: [patch]
# A base model's children: watched, and converged by server-side apply (a PUT takes keys back).
- apiGroups: [apps]
  resources: [deployments]
  verbs: [list, watch, create, patch, update, delete]
- apiGroups: [""]
  resources: [services]
  verbs: [list, watch, create, patch, update, delete]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [list, watch, create, patch, update, delete]
- apiGroups: [""]
  resources: [configmaps]
  verbs: [list, watch, create, patch, update, delete]
# The router (spec.router): its account, and the Role it binds. Kubernetes lets the operator
# grant only what it holds itself: pods get/list/watch, and read on the Inference Extension's
# kinds (the Endpoint Picker reads its pool, rewrites and objectives). The operator writes the
# pool and, for canaries between adapters (spec.canary), the rewrites.
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: [list, watch, create, patch, update, delete]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [list, watch, create, patch, update, delete]
- apiGroups: [inference.networking.x-k8s.io]
  resources: [inferenceobjectives]
  verbs: [get, list, watch]
- apiGroups: [inference.networking.x-k8s.io]
  resources: [inferencemodelrewrites]
  verbs: [get, list, watch, create, patch, update, delete]
- apiGroups: [inference.networking.k8s.io]
  resources: [inferencepools]
  verbs: [get, list, watch, create, patch, update, delete]
# The vLLM pods: watched; the agent-ready readiness gate is a condition in their status. get is
# held for the router's Role, which grants it to the Endpoint Picker.
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [pods/status]
  verbs: [patch]
# The agent token (created once per base model) and the API key / token references it reads.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, create]
# Events about its objects (kopf posts core/v1 Events).
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end }}
