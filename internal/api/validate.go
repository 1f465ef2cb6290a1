package api

import (
	"regexp"

	"github.com/hypeman-vm/hypeman/internal/errdefs"
	"github.com/hypeman-vm/hypeman/internal/oapi"
)

var tagKeyPattern = regexp.MustCompile(`^[A-Za-z0-9 _.:/=+@-]{1,128}$`)

// checkTags checks what the OpenAPI document cannot express about tag keys.
func checkTags(tags map[string]string) error {
	if len(tags) > 50 {
		return errdefs.Newf(errdefs.ErrInvalidArgument, "invalid_request", "at most 50 tags, got %d", len(tags))
	}
	for k := range tags {
		if !tagKeyPattern.MatchString(k) {
			return errdefs.Newf(errdefs.ErrInvalidArgument, "invalid_request",
				"invalid tag key %q: 1 to 128 characters from A-Za-z0-9 _.:/=+@-", k)
		}
	}
	return nil
}

// checkPlatform accepts only the platform this host runs.
func checkPlatform(p *string) error {
	if p == nil || *p == "" || *p == "linux/amd64" {
		return nil
	}
	return errdefs.Newf(errdefs.ErrInvalidArgument, "invalid_platform",
		"platform %q is not supported: this host runs linux/amd64 only", *p)
}

// unsupportedCreateFields names request fields this server does not
// implement yet. Ignoring them silently would give users an instance that
// is not what they asked for, so their use is refused.
func unsupportedCreateFields(b *oapi.CreateInstanceRequest) error {
	var field string
	switch {
	case len(b.Volumes) > 0:
		field = "volumes"
	case len(b.Devices) > 0:
		field = "devices"
	case b.Gpu != nil:
		field = "gpu"
	case len(b.Credentials) > 0:
		field = "credentials"
	case b.Ttl != nil && *b.Ttl != "" && *b.Ttl != "0s":
		field = "ttl"
	case b.ExpiresAt != nil:
		field = "expires_at"
	case b.DiskIoBps != nil && *b.DiskIoBps != "":
		field = "disk_io_bps"
	case b.HealthCheck != nil && b.HealthCheck.Type != nil && *b.HealthCheck.Type != oapi.HealthCheckTypeNone:
		field = "health_check"
	case b.RestartPolicy != nil && b.RestartPolicy.Policy != nil && *b.RestartPolicy.Policy != oapi.RestartPolicyPolicyNever:
		field = "restart_policy"
	case b.AutoStandby != nil && b.AutoStandby.Enabled != nil && *b.AutoStandby.Enabled:
		field = "auto_standby"
	case b.Network != nil && b.Network.Egress != nil && b.Network.Egress.Enabled != nil && *b.Network.Egress.Enabled:
		field = "network.egress"
	case b.Network != nil && (b.Network.BandwidthDownload != nil || b.Network.BandwidthUpload != nil):
		field = "network bandwidth limits"
	default:
		return nil
	}
	return errdefs.Newf(errdefs.ErrNotImplemented, "not_supported", "%s is not supported by this server yet", field)
}
