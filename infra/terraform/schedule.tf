# The rotation nudge: an EventBridge Scheduler schedule puts one event per period on the mailplane event bus
# (source mailplane.scheduler, detail-type rotate-due). Whatever runs `mailplane rotate-due` subscribes to the bus
# with a rule (README: the rotation nudge). A bus target is what LocalStack accepts and reads back
# (reference/local-stack.md §4); schedules never fire there.

resource "aws_cloudwatch_event_bus" "this" {
  name = var.name_prefix
}

data "aws_caller_identity" "current" {}

data "aws_iam_policy_document" "scheduler_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["scheduler.amazonaws.com"]
    }
    # only schedules of this account may use the role (confused deputy)
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [data.aws_caller_identity.current.account_id]
    }
  }
}

resource "aws_iam_role" "scheduler" {
  name               = "${var.name_prefix}-scheduler"
  description        = "EventBridge Scheduler: put the rotation nudge on the mailplane bus"
  assume_role_policy = data.aws_iam_policy_document.scheduler_assume.json
}

data "aws_iam_policy_document" "scheduler" {
  statement {
    actions   = ["events:PutEvents"]
    resources = [aws_cloudwatch_event_bus.this.arn]
  }
}

resource "aws_iam_role_policy" "scheduler" {
  name   = "put-rotation-nudge"
  role   = aws_iam_role.scheduler.id
  policy = data.aws_iam_policy_document.scheduler.json
}

resource "aws_scheduler_schedule" "rotate_due" {
  name                         = "${var.name_prefix}-rotate-due"
  description                  = "mailplane: nudge the DKIM rotation (rotate-due)"
  schedule_expression          = var.rotation_schedule
  schedule_expression_timezone = var.schedule_timezone

  flexible_time_window {
    mode                      = var.rotation_window_minutes > 0 ? "FLEXIBLE" : "OFF"
    maximum_window_in_minutes = var.rotation_window_minutes > 0 ? var.rotation_window_minutes : null
  }

  target {
    arn      = aws_cloudwatch_event_bus.this.arn
    role_arn = aws_iam_role.scheduler.arn
    input    = jsonencode({ command = "rotate-due", schedule = "${var.name_prefix}-rotate-due" })

    eventbridge_parameters {
      source      = "mailplane.scheduler"
      detail_type = "rotate-due"
    }

    retry_policy {
      maximum_event_age_in_seconds = 3600
      maximum_retry_attempts       = 3
    }
  }

  # the role must be able to put events before the first invocation
  depends_on = [aws_iam_role_policy.scheduler]
}
