{{/* The chart's name, or nameOverride. */}}
{{- define "knm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The object name prefix: fullnameOverride, the release name, or <release>-<chart>. */}}
{{- define "knm.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "knm.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Labels every object of the release carries (but the RuntimeClasses, which are exactly what
`kata-nri-manager runtimeclass` prints). */}}
{{- define "knm.labels" -}}
app.kubernetes.io/name: {{ include "knm.name" . | quote }}
app.kubernetes.io/instance: {{ .Release.Name | quote }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | quote }}
{{- end -}}

{{/* The selector labels of the agent's pods (and the PodMonitor's). */}}
{{- define "knm.selectorLabels" -}}
app.kubernetes.io/name: {{ include "knm.name" . | quote }}
app.kubernetes.io/instance: {{ .Release.Name | quote }}
app.kubernetes.io/component: node-agent
{{- end -}}

{{- define "knm.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Where the pods find things. The ConfigMaps and Secrets are mounted at the node-local keys'
defaults (policies.dir, pullSecretsDir), so an empty node file works. */}}
{{- define "knm.configPath" -}}/etc/kata-nri-manager/config/config.yaml{{- end -}}
{{- define "knm.nodeDirInPod" -}}/host/etc/kata-nri-manager{{- end -}}
{{- define "knm.nodeConfigPath" -}}{{ include "knm.nodeDirInPod" . }}/{{ .Values.nodeConfig.fileName }}{{- end -}}

{{/* containerd's socket directory and the NRI socket directory, from the operator config (with
the daemon's defaults), so the mounts follow the config. */}}
{{- define "knm.containerdSocketDir" -}}
{{- dir (dig "containerd" "address" "/run/containerd/containerd.sock" .Values.config) -}}
{{- end -}}
{{- define "knm.nriSocketDir" -}}
{{- dir (dig "nri" "socket" "/var/run/nri/nri.sock" .Values.config) -}}
{{- end -}}

{{/* The node selector of the agent and the uninstall hook: nodeSelector plus the opt-in label. */}}
{{- define "knm.nodeSelector" -}}
{{- $sel := dict -}}
{{- range $k, $v := .Values.nodeSelector -}}
{{- $_ := set $sel $k (toString $v) -}}
{{- end -}}
{{- if .Values.optIn.enabled -}}
{{- $_ := set $sel .Values.optIn.key (toString .Values.optIn.value) -}}
{{- end -}}
{{- range $k, $v := $sel }}
{{ $k | quote }}: {{ $v | quote }}
{{- end -}}
{{- end -}}

{{/* A toleration list as Kubernetes takes it: tolerationSeconds an integer (Helm reads numbers
as floats), every other field a string. */}}
{{- define "knm.tolerationList" -}}
{{- $out := list -}}
{{- range . -}}
{{- $t := dict -}}
{{- range $k, $v := . -}}
{{- $_ := set $t $k (ternary ($v | int64) (toString $v) (eq $k "tolerationSeconds")) -}}
{{- end -}}
{{- $out = append $out $t -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/* The pull secrets the classes name, each once. */}}
{{- define "knm.pullSecrets" -}}
{{- $names := list -}}
{{- range (.Values.config.runtimeClasses | default list) -}}
{{- $s := dig "artifacts" "pullSecret" "" . -}}
{{- if and $s (not (has $s $names)) -}}
{{- $names = append $names $s -}}
{{- end -}}
{{- end -}}
{{- toJson $names -}}
{{- end -}}

{{/* Refuses what cannot work, with a sentence: node-local keys in the operator config (the
daemon would refuse the file), `listen` (metrics decides), an opt-in label the daemon would
overwrite, a PodMonitor nobody can scrape. */}}
{{- define "knm.checks" -}}
{{- $c := .Values.config | default dict -}}
{{- $where := "set it in each node's node file (nodeConfig; docs/configuration.md, \"Which file holds what\"), not in the chart's config: the daemon refuses node-local keys from a ConfigMap" -}}
{{- range $key := list "artifactsDir" "pullSecretsDir" "stateDir" "gate" "kataConfig" "node" -}}
{{- if hasKey $c $key -}}
{{- fail (printf "config.%s is node-local: %s" $key $where) -}}
{{- end -}}
{{- end -}}
{{- range $pair := list (list "registries" "caFile") (list "registries" "hostsDir") (list "containerd" "configPath") (list "policies" "dir") (list "cdi" "dir") -}}
{{- if hasKey (get $c (index $pair 0) | default dict) (index $pair 1) -}}
{{- fail (printf "config.%s.%s is node-local: %s" (index $pair 0) (index $pair 1) $where) -}}
{{- end -}}
{{- end -}}
{{- if eq (dig "containerd" "restart" "method" "" $c) "command" -}}
{{- fail (printf "config.containerd.restart of method command is node-local: %s" $where) -}}
{{- end -}}
{{- range $i, $class := ($c.runtimeClasses | default list) -}}
{{- range $key := list "runtimePath" "adopt" "fromArtifact" -}}
{{- if hasKey ($class.runtime | default dict) $key -}}
{{- fail (printf "config.runtimeClasses[%d].runtime.%s is node-local: %s" $i $key $where) -}}
{{- end -}}
{{- end -}}
{{- if hasKey ($class.artifacts | default dict) "verify" -}}
{{- fail (printf "config.runtimeClasses[%d].artifacts.verify is node-local: %s" $i $where) -}}
{{- end -}}
{{- if and $.Values.optIn.enabled (eq $.Values.optIn.key (printf "kata-nri-manager.io/%s" $class.name)) -}}
{{- fail (printf "optIn.key %s is the label the daemon sets for class %s: choose another key" $.Values.optIn.key $class.name) -}}
{{- end -}}
{{- end -}}
{{- if hasKey $c "listen" -}}
{{- fail "config.listen: the chart passes `run --listen`; set metrics.port and metrics.hostIP instead" -}}
{{- end -}}
{{- if and .Values.metrics.podMonitor.enabled (not .Values.metrics.hostIP) -}}
{{- fail "metrics.podMonitor.enabled needs metrics.hostIP: true (on 127.0.0.1 only kubelet on the node reaches /metrics)" -}}
{{- end -}}
{{- end -}}

{{/* The host paths both the agent and the hook mount at their own path: volumeMounts (arg
"mounts") or volumes (arg "volumes"). Each: name, host path, hostPath type, read-only. */}}
{{- define "knm.hostMounts" -}}
{{- $ := index . 0 -}}
{{- $want := index . 1 -}}
{{- $forHook := index . 2 -}}
{{- $m := list -}}
{{- $m = append $m (list "node-config" $.Values.nodeConfig.hostDir "DirectoryOrCreate" true (include "knm.nodeDirInPod" $)) -}}
{{- $m = append $m (list "containerd-config" $.Values.hostPaths.containerdConfigDir "DirectoryOrCreate" false "") -}}
{{- $m = append $m (list "containerd-socket" (include "knm.containerdSocketDir" $) "DirectoryOrCreate" false "") -}}
{{- if not $forHook -}}
{{- $m = append $m (list "nri" (include "knm.nriSocketDir" $) "DirectoryOrCreate" false "") -}}
{{- end -}}
{{- $m = append $m (list "opt" "/opt/kata-nri-manager" "DirectoryOrCreate" false "") -}}
{{- $m = append $m (list "run" "/run/kata-nri-manager" "DirectoryOrCreate" false "") -}}
{{- $m = append $m (list "state" "/var/lib/kata-nri-manager" "DirectoryOrCreate" false "") -}}
{{- $m = append $m (list "system-bus" "/run/dbus/system_bus_socket" "Socket" false "") -}}
{{- $m = append $m (list "cdi" $.Values.hostPaths.cdiDir "DirectoryOrCreate" false "") -}}
{{- if and $.Values.hostPaths.kata.enabled (not $forHook) -}}
{{- $m = append $m (list "kata" $.Values.hostPaths.kata.path "DirectoryOrCreate" true "") -}}
{{- end -}}
{{- if and $.Values.hostPaths.hostRoot.enabled (not $forHook) -}}
{{- $m = append $m (list "host-root" "/" "Directory" true $.Values.hostPaths.hostRoot.mountPath) -}}
{{- end -}}
{{- if $.Values.hostPaths.containerdBinary.enabled -}}
{{- $m = append $m (list "containerd-binary" $.Values.hostPaths.containerdBinary.path "File" true "") -}}
{{- end -}}
{{- range $i, $e := $.Values.hostPaths.extra -}}
{{- $m = append $m (list (printf "extra-%d" $i) $e.path $e.type (ternary true $e.readOnly (not (hasKey $e "readOnly"))) "") -}}
{{- end -}}
{{- range $m -}}
{{- if eq $want "mounts" }}
- name: {{ index . 0 }}
  mountPath: {{ default (index . 1) (index . 4) | quote }}
  {{- if index . 3 }}
  readOnly: true
  {{- end }}
{{- else }}
- name: {{ index . 0 }}
  hostPath:
    path: {{ index . 1 | quote }}
    type: {{ index . 2 }}
{{- end -}}
{{- end -}}
{{- end -}}
