"""OTP supervision on Trio nurseries."""
