{{- define "cardlink.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}{{ .Release.Name | trunc 63 | trimSuffix "-" }}{{- else -}}{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "cardlink.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "cardlink.secretName" -}}
{{- .Values.secrets.existingSecret | default (printf "%s-secrets" (include "cardlink.fullname" .)) -}}
{{- end -}}

{{- define "cardlink.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* Environment every cardlink container shares: Kafka and telemetry. */}}
{{- define "cardlink.commonEnv" -}}
- name: CARDLINK_KAFKA_BOOTSTRAP
  value: {{ .Values.kafka.bootstrap | quote }}
- name: CARDLINK_TOPIC_PREFIX
  value: {{ .Values.kafka.topicPrefix | quote }}
{{- range $key, $value := .Values.kafka.settings }}
- name: CARDLINK_KAFKA__{{ $key | upper | replace "." "_" }}
  value: {{ $value | quote }}
{{- end }}
{{- range .Values.kafka.secretSettings }}
- name: CARDLINK_KAFKA__{{ .key | upper | replace "." "_" }}
  valueFrom:
    secretKeyRef:
      name: {{ .secretName }}
      key: {{ .secretKey }}
{{- end }}
{{- if .Values.kafka.tls.caSecret }}
- name: CARDLINK_KAFKA__SSL_CA_LOCATION
  value: /etc/cardlink/kafka-ca/ca.crt
{{- end }}
- name: RUST_LOG
  value: {{ .Values.telemetry.logLevel | quote }}
- name: CARDLINK_LOG_FORMAT
  value: {{ .Values.telemetry.logFormat | quote }}
{{- $endpoint := .Values.telemetry.otlpEndpoint }}
{{- if .Values.telemetry.collector.enabled }}
{{- $endpoint = printf "http://%s-otel-collector:4317" (include "cardlink.fullname" .) }}
{{- end }}
{{- if $endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ $endpoint | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: {{ if .Values.telemetry.collector.enabled }}grpc{{ else }}{{ .Values.telemetry.otlpProtocol | quote }}{{ end }}
- name: OTEL_METRIC_EXPORT_INTERVAL
  value: {{ .Values.telemetry.metricExportIntervalMs | quote }}
{{- end }}
{{- end -}}

{{/* Egress every cardlink component needs: DNS, the Kafka brokers, the release's collector. */}}
{{- define "cardlink.egress" -}}
- ports: [{protocol: UDP, port: 53}, {protocol: TCP, port: 53}]
- ports:
    {{- range .Values.kafka.ports }}
    - {protocol: TCP, port: {{ . }}}
    {{- end }}
  {{- with .Values.networkPolicy.kafkaPeers }}
  to: {{- toYaml . | nindent 4 }}
  {{- end }}
{{- if .Values.telemetry.collector.enabled }}
- to:
    - podSelector:
        matchLabels:
          app.kubernetes.io/instance: {{ .Release.Name }}
          app.kubernetes.io/component: otel-collector
  ports: [{protocol: TCP, port: 4317}, {protocol: TCP, port: 4318}]
{{- end }}
{{- with .Values.networkPolicy.extraEgress }}
{{ toYaml . }}
{{- end }}
{{- end }}
