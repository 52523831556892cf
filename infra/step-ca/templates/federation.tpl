{{- /*
  Mosaic Federation peer client certificate (step-ca X.509 template, JWK provisioner "mosaic-fed").

  The grant id and subject user id come from the custom one-time-token claims
  mosaic_grant_id and mosaic_subject_user_id (.Token is the whole token payload).
  Each is written as a non-critical extension whose value is the DER of an ASN.1
  UTF8String: tag 0x0C, length 0x24, then the 36 ASCII bytes of a lowercase UUID.
  ("\f$" is 0x0C 0x24; the regexMatch guard makes the fixed length exact.)

  Nothing is copied from the CSR except what step-ca already validated against the
  token: the subject common name (.Subject, from the token's sub) and the SANs
  (.SANs, from the token's sans, which must equal the CSR's SANs).
  Extensions requested in the CSR (.Insecure.CR.Extensions) are never used.
*/ -}}
{{- $uuid := "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$" -}}
{{- $grant := toString .Token.mosaic_grant_id -}}
{{- $subject := toString .Token.mosaic_subject_user_id -}}
{{- if not (regexMatch $uuid $grant) -}}
{{- fail "token claim mosaic_grant_id must be a lowercase UUID" -}}
{{- end -}}
{{- if not (regexMatch $uuid $subject) -}}
{{- fail "token claim mosaic_subject_user_id must be a lowercase UUID" -}}
{{- end -}}
{
	"subject": {"commonName": {{ toJson .Subject.CommonName }}},
	"sans": {{ toJson .SANs }},
	"keyUsage": ["digitalSignature"],
	"extKeyUsage": ["clientAuth"],
	"basicConstraints": {"isCA": false},
	"extensions": [
		{"id": "1.3.6.1.4.1.99999.1", "critical": false, "value": {{ printf "\f$%s" $grant | b64enc | toJson }}},
		{"id": "1.3.6.1.4.1.99999.2", "critical": false, "value": {{ printf "\f$%s" $subject | b64enc | toJson }}}
	]
}
