# Inputs. Secret values are sensitive variables: pass them as TF_VAR_<name> environment variables (never on the
# command line, never in a committed .tfvars file). They end up in the Terraform state: keep the state encrypted
# and private, or set `manage_secret_values = false` and write the values with `aws secretsmanager put-secret-value`.

# --- where and what -------------------------------------------------------------------------------------------

variable "region" {
  description = "AWS region."
  type        = string
  default     = "eu-central-1"
}

variable "endpoint_url" {
  description = "One endpoint for every AWS service (LocalStack: http://127.0.0.1:4566); null = real AWS."
  type        = string
  default     = null
}

variable "name_prefix" {
  description = "Prefix of every name (buckets, secrets, roles, functions); bucket names must be globally unique."
  type        = string
  default     = "mailplane"
  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9-]{1,38}[a-z0-9]$", var.name_prefix))
    error_message = "name_prefix: 3-40 characters, lowercase letters, digits and '-' (it is part of bucket names)."
  }
}

variable "tags" {
  description = "Extra tags on every taggable resource."
  type        = map(string)
  default     = {}
}

variable "kms_key_arn" {
  description = "Customer managed KMS key for the buckets (SSE-KMS) and the secrets; null = SSE-S3 and aws/secretsmanager."
  type        = string
  default     = null
}

# --- buckets --------------------------------------------------------------------------------------------------

variable "idempotency_prefix" {
  description = "Key prefix of the idempotency ledger in the state bucket; objects under it expire."
  type        = string
  default     = "idem/"
}

variable "ledger_retention_days" {
  description = "Days after which ledger entries (idempotency_prefix) expire: the settings' [retention] ledger_days."
  type        = number
  default     = 14
  validation {
    condition     = var.ledger_retention_days >= 1
    error_message = "ledger_retention_days must be at least 1."
  }
}

variable "audit_retention_days" {
  description = "Days after which audit records (audit/) expire: the settings' [retention] audit_days; 0 = kept for good."
  type        = number
  default     = 730
  validation {
    condition     = var.audit_retention_days >= 0
    error_message = "audit_retention_days must be 0 (kept for good) or more."
  }
}

variable "tlsrpt_retention_days" {
  description = "Days after which TLS report day objects (tlsrpt/) expire: the settings' [retention] tlsrpt_days."
  type        = number
  default     = 90
  validation {
    condition     = var.tlsrpt_retention_days >= 1
    error_message = "tlsrpt_retention_days must be at least 1."
  }
}

variable "noncurrent_version_days" {
  description = "Days a replaced or deleted version of a state object is kept (the state bucket is versioned)."
  type        = number
  default     = 90
}

variable "force_destroy" {
  description = "Let `terraform destroy` delete non-empty buckets (tests only: it deletes the DKIM keys too)."
  type        = bool
  default     = false
}

# --- secrets --------------------------------------------------------------------------------------------------

variable "recovery_window_in_days" {
  description = "Secrets Manager recovery window on delete: 0 (delete at once, tests) or 7-30."
  type        = number
  default     = 30
  validation {
    condition     = var.recovery_window_in_days == 0 || (var.recovery_window_in_days >= 7 && var.recovery_window_in_days <= 30)
    error_message = "recovery_window_in_days must be 0 or between 7 and 30."
  }
}

variable "manage_secret_values" {
  description = "Write the secret values below into Secrets Manager (false: create empty secrets, fill them out of band)."
  type        = bool
  default     = true
}

variable "mailcow_api_key" {
  description = "Mailcow read-write API key."
  type        = string
  sensitive   = true
  default     = null
}

variable "pmg_user" {
  description = "PMG API user."
  type        = string
  default     = "automation@pmg"
}

variable "pmg_password" {
  description = "Password of pmg_user."
  type        = string
  sensitive   = true
  default     = null
}

variable "tsig_secret" {
  description = "TSIG key secret (base64) for RFC 2136 updates and transfers."
  type        = string
  sensitive   = true
  default     = null
}

variable "dkim_kek" {
  description = "DKIM key-encryption key: 32 bytes, base64; seals the DKIM private keys in the state bucket."
  type        = string
  sensitive   = true
  default     = null
}

variable "broker_user" {
  description = "RabbitMQ user the functions consume as (the Lambda event source mappings use it too)."
  type        = string
  default     = "worker"
}

variable "broker_password" {
  description = "Password of broker_user."
  type        = string
  sensitive   = true
  default     = null
}

# --- rotation schedule ----------------------------------------------------------------------------------------

variable "rotation_schedule" {
  description = "EventBridge Scheduler expression of the rotation nudge."
  type        = string
  default     = "rate(1 hour)"
}

variable "rotation_window_minutes" {
  description = "Flexible time window of the nudge (spreads it like RandomizedDelaySec); 0 = fire exactly on time."
  type        = number
  default     = 15
}

variable "schedule_timezone" {
  description = "Time zone of cron() schedule expressions."
  type        = string
  default     = "UTC"
}

# --- Lambda (lambda.tf) ---------------------------------------------------------------------------------------

variable "enable_lambda" {
  description = "Create the Lambda functions and their Amazon MQ event source mappings (false for the LocalStack test)."
  type        = bool
  default     = true
}

variable "lambda_functions" {
  description = "One function per inbound routing key (the names of the handler modules)."
  type        = list(string)
  default     = ["domain_created", "domain_deleted", "key_rotate", "node_down", "node_up"]
}

variable "lambda_zip" {
  description = "Deployment package: the `functions` package and its dependencies (README: building the zip)."
  type        = string
  default     = null
}

variable "lambda_handler" {
  description = "Handler of every function."
  type        = string
  default     = "functions.runtime.lambda_rmq.handler"
}

variable "lambda_runtime" {
  description = "Lambda runtime."
  type        = string
  default     = "python3.12"
}

variable "lambda_timeout" {
  description = "Function timeout in seconds (a whole batch must finish within it; at most 840 for Amazon MQ)."
  type        = number
  default     = 300
  validation {
    condition     = var.lambda_timeout >= 1 && var.lambda_timeout <= 840
    error_message = "lambda_timeout must be 1-840 s (Amazon MQ event source mappings allow at most 14 minutes)."
  }
}

variable "lambda_memory_mb" {
  description = "Function memory in MB."
  type        = number
  default     = 512
}

variable "lambda_config_path" {
  description = "MAILPLANE_CONFIG inside the function: the settings file shipped in the zip."
  type        = string
  default     = "/var/task/platform.toml"
}

variable "lambda_schemas_dir" {
  description = "MAILPLANE_SCHEMAS_DIR inside the function: the event schemas (schemas/) shipped in the zip."
  type        = string
  default     = "/var/task/schemas"
}

variable "lambda_subnet_ids" {
  description = "Subnets of the functions (to reach Mailcow, PMG, DNS and the broker privately); empty = no VPC."
  type        = list(string)
  default     = []
}

variable "lambda_security_group_ids" {
  description = "Security groups of the functions (with lambda_subnet_ids)."
  type        = list(string)
  default     = []
}

variable "log_retention_days" {
  description = "CloudWatch Logs retention of the function logs."
  type        = number
  default     = 30
}

variable "broker_arn" {
  description = "ARN of the Amazon MQ for RabbitMQ broker (required with enable_lambda)."
  type        = string
  default     = null
  validation {
    condition     = var.broker_arn == null || can(regex("^arn:aws[a-z-]*:mq:[a-z0-9-]+:[0-9]{12}:broker:", var.broker_arn))
    error_message = "broker_arn must be an Amazon MQ broker ARN (arn:aws:mq:<region>:<account>:broker:<name>:<id>)."
  }
}

variable "broker_vhost" {
  description = "RabbitMQ virtual host of the work queues."
  type        = string
  default     = "mailplane"
}

variable "work_queues" {
  description = "Queues each function consumes: q.work.0 and every retry rung (production ladder: 6 rungs)."
  type        = list(string)
  default     = ["q.work.0", "q.work.1", "q.work.2", "q.work.3", "q.work.4", "q.work.5", "q.work.6"]
}

variable "batch_size" {
  description = "Records per invocation. Any error retries the whole batch, so keep it small."
  type        = number
  default     = 10
  validation {
    condition     = var.batch_size >= 1 && var.batch_size <= 100
    error_message = "batch_size must be 1-100 (any error retries the whole batch)."
  }
}

variable "batching_window_seconds" {
  description = "Maximum batching window in seconds."
  type        = number
  default     = 1
}

variable "event_source_enabled" {
  description = "Start consuming at once (false: create the mappings disabled)."
  type        = bool
  default     = true
}
