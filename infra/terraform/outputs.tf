output "state_bucket" {
  description = "Private bucket: per-domain state, sealed DKIM keys, idempotency ledger ([store] state_bucket)."
  value       = aws_s3_bucket.this["state"].id
}

output "web_bucket" {
  description = "MTA-STS policy bucket ([store] web_bucket)."
  value       = aws_s3_bucket.this["web"].id
}

output "secret_arns" {
  description = "Secret ARN by secret name (mailcow-api-key, pmg-credentials, tsig-key, dkim-kek, broker-credentials)."
  value       = { for name, s in aws_secretsmanager_secret.this : name => s.arn }
}

output "secret_env" {
  description = "Environment variable each secret feeds (the names the settings file references)."
  value       = { for name, s in local.secrets : name => s.env }
}

output "event_bus_arn" {
  description = "Bus that receives the rotation nudge."
  value       = aws_cloudwatch_event_bus.this.arn
}

output "schedule_arn" {
  description = "EventBridge Scheduler schedule of the rotation nudge."
  value       = aws_scheduler_schedule.rotate_due.arn
}

output "lambda_function_arns" {
  description = "Function ARN by function name (empty without enable_lambda)."
  value       = { for name, f in aws_lambda_function.fn : name => f.arn }
}

output "event_source_mapping_ids" {
  description = "Event source mapping UUID by \"<function>:<queue>\" (empty without enable_lambda)."
  value       = { for key, m in aws_lambda_event_source_mapping.rmq : key => m.uuid }
}
