# The serverless runtime, only with `enable_lambda = true`: one function per inbound routing key, all with the
# handler functions.runtime.lambda_rmq.handler, fed by Amazon MQ for RabbitMQ event source mappings
# (reference/broker.md §13). LocalStack cannot run this (no Amazon MQ, no Lambda without Docker): the test only plans it.
#
# Routing: the topology (infra/rabbitmq/definitions.json) has ONE work queue per rung, q.work.k, shared by every
# event type. Each function therefore gets one mapping per rung, and a function may receive any event type: the
# shared handler routes by the event's type (functions.ROUTES), exactly like the worker. Never add FilterCriteria
# to split types across functions on a shared queue: Lambda drops (acks) records that match no filter.
# One mapping is one consumer with one concurrent execution, so five functions = five consumers per rung.

locals {
  lambda_functions = var.enable_lambda ? toset(var.lambda_functions) : toset([])
  event_sources = var.enable_lambda ? {
    for pair in setproduct(var.lambda_functions, var.work_queues) :
    "${pair[0]}:${pair[1]}" => { function = pair[0], queue = pair[1] }
  } : {}
  # environment variable -> secret (and JSON field): resolved by the runtime at cold start, before Settings.load
  secret_refs = jsonencode({
    for name, s in local.secrets : s.env => merge(
      { secret = aws_secretsmanager_secret.this[name].arn },
      s.key == null ? {} : { key = s.key },
    )
  })
}

data "aws_iam_policy_document" "lambda_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "lambda" {
  count              = var.enable_lambda ? 1 : 0
  name               = "${var.name_prefix}-functions"
  description        = "mailplane functions: secrets, state and web buckets, logs, Amazon MQ event source"
  assume_role_policy = data.aws_iam_policy_document.lambda_assume.json
}

data "aws_iam_policy_document" "lambda" {
  count = var.enable_lambda ? 1 : 0
  statement {
    sid       = "Logs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = [for g in aws_cloudwatch_log_group.fn : "${g.arn}:*"]
  }
  statement {
    sid       = "ReadSecrets"
    actions   = ["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"]
    resources = [for s in aws_secretsmanager_secret.this : s.arn]
  }
  statement {
    sid       = "ListBuckets"
    actions   = ["s3:ListBucket"]
    resources = [for b in aws_s3_bucket.this : b.arn]
  }
  statement {
    sid       = "ReadWriteObjects"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"]
    resources = [for b in aws_s3_bucket.this : "${b.arn}/*"]
  }
  statement {
    sid       = "AmazonMqEventSource"
    actions   = ["mq:DescribeBroker"]
    resources = [coalesce(var.broker_arn, "arn:aws:mq:${var.region}:000000000000:broker:unset:b-unset")]
  }
  statement {
    # the event source mapping and a function in a VPC manage their network interfaces
    sid = "VpcNetworkInterfaces"
    actions = [
      "ec2:CreateNetworkInterface",
      "ec2:DeleteNetworkInterface",
      "ec2:DescribeNetworkInterfaces",
      "ec2:DescribeSecurityGroups",
      "ec2:DescribeSubnets",
      "ec2:DescribeVpcs",
    ]
    resources = ["*"]
  }
  dynamic "statement" {
    for_each = var.kms_key_arn == null ? [] : [var.kms_key_arn]
    content {
      sid       = "DecryptWithKey"
      actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
      resources = [statement.value]
    }
  }
}

resource "aws_iam_role_policy" "lambda" {
  count  = var.enable_lambda ? 1 : 0
  name   = "mailplane-functions"
  role   = aws_iam_role.lambda[0].id
  policy = data.aws_iam_policy_document.lambda[0].json
}

resource "aws_cloudwatch_log_group" "fn" {
  for_each          = local.lambda_functions
  name              = "/aws/lambda/${var.name_prefix}-${replace(each.key, "_", "-")}"
  retention_in_days = var.log_retention_days
}

resource "aws_lambda_function" "fn" {
  for_each         = local.lambda_functions
  function_name    = "${var.name_prefix}-${replace(each.key, "_", "-")}"
  description      = "mailplane ${each.key} (Amazon MQ q.work.* consumer)"
  role             = aws_iam_role.lambda[0].arn
  handler          = var.lambda_handler
  runtime          = var.lambda_runtime
  filename         = var.lambda_zip
  source_code_hash = var.lambda_zip == null ? null : filebase64sha256(var.lambda_zip)
  timeout          = var.lambda_timeout
  memory_size      = var.lambda_memory_mb

  environment {
    variables = {
      MAILPLANE_CONFIG       = var.lambda_config_path
      MAILPLANE_SCHEMAS_DIR  = var.lambda_schemas_dir
      MAILPLANE_FUNCTION     = each.key
      MAILPLANE_STATE_BUCKET = aws_s3_bucket.this["state"].id
      MAILPLANE_WEB_BUCKET   = aws_s3_bucket.this["web"].id
      MAILPLANE_SECRETS      = local.secret_refs
    }
  }

  dynamic "vpc_config" {
    for_each = length(var.lambda_subnet_ids) > 0 ? [1] : []
    content {
      subnet_ids         = var.lambda_subnet_ids
      security_group_ids = var.lambda_security_group_ids
    }
  }

  lifecycle {
    precondition {
      condition     = var.lambda_zip != null
      error_message = "enable_lambda needs lambda_zip (the deployment package; README: building the zip)."
    }
  }

  depends_on = [aws_cloudwatch_log_group.fn, aws_iam_role_policy.lambda]
}

resource "aws_lambda_event_source_mapping" "rmq" {
  for_each                           = local.event_sources
  event_source_arn                   = var.broker_arn
  function_name                      = aws_lambda_function.fn[each.value.function].arn
  queues                             = [each.value.queue]
  batch_size                         = var.batch_size
  maximum_batching_window_in_seconds = var.batching_window_seconds
  enabled                            = var.event_source_enabled

  source_access_configuration {
    type = "BASIC_AUTH"
    uri  = aws_secretsmanager_secret.this["broker-credentials"].arn
  }

  source_access_configuration {
    type = "VIRTUAL_HOST"
    uri  = var.broker_vhost
  }

  lifecycle {
    precondition {
      condition     = var.broker_arn != null
      error_message = "enable_lambda needs broker_arn (the Amazon MQ for RabbitMQ broker)."
    }
  }

  # creating a mapping checks that the role may describe the broker and read the BASIC_AUTH secret
  depends_on = [aws_iam_role_policy.lambda, aws_secretsmanager_secret_version.this]
}
