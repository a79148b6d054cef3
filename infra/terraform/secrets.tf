# Secrets Manager entries, one per credential. Plain strings except the two user/password pairs, which are JSON
# {"username", "password"}: that is the format the Amazon MQ event source mapping reads (BASIC_AUTH).
# `env` is the environment variable the settings file references ({ env = "..." }) and `key` the JSON field to take;
# lambda.tf hands this map to the functions as MAILPLANE_SECRETS (README: runtime contract).

locals {
  secrets = {
    mailcow-api-key = {
      description = "Mailcow read-write API key"
      env         = "MAILPLANE_MAILCOW_API_KEY"
      key         = null
    }
    pmg-credentials = {
      description = "PMG API user and password"
      env         = "MAILPLANE_PMG_PASSWORD"
      key         = "password"
    }
    tsig-key = {
      description = "TSIG secret (base64) for RFC 2136 updates and zone transfers"
      env         = "MAILPLANE_TSIG_SECRET"
      key         = null
    }
    dkim-kek = {
      description = "DKIM key-encryption key (32 bytes, base64)"
      env         = "MAILPLANE_DKIM_KEK"
      key         = null
    }
    broker-credentials = {
      description = "RabbitMQ credentials of the consumer (Amazon MQ BASIC_AUTH format)"
      env         = "MAILPLANE_AMQP_WORKER_PASSWORD"
      key         = "password"
    }
  }
  # kept apart from the names above: a sensitive value must never become part of a for_each key set
  secret_values = {
    mailcow-api-key    = var.mailcow_api_key
    pmg-credentials    = var.pmg_password == null ? null : jsonencode({ username = var.pmg_user, password = var.pmg_password })
    tsig-key           = var.tsig_secret
    dkim-kek           = var.dkim_kek
    broker-credentials = var.broker_password == null ? null : jsonencode({ username = var.broker_user, password = var.broker_password })
  }
}

resource "aws_secretsmanager_secret" "this" {
  for_each                = local.secrets
  name                    = "${var.name_prefix}/${each.key}"
  description             = each.value.description
  kms_key_id              = var.kms_key_arn
  recovery_window_in_days = var.recovery_window_in_days
}

resource "aws_secretsmanager_secret_version" "this" {
  for_each      = var.manage_secret_values ? local.secrets : {}
  secret_id     = aws_secretsmanager_secret.this[each.key].id
  secret_string = local.secret_values[each.key]

  lifecycle {
    precondition {
      condition     = local.secret_values[each.key] != null
      error_message = "manage_secret_values is true but the value of secret ${each.key} is not set (TF_VAR_...)."
    }
  }
}
