# The two buckets of the object store ([store] in the settings): `state` (private: per-domain state, sealed DKIM
# private keys, the idempotency ledger under idem/) and `web` (the MTA-STS policies, read by the MTA-STS web host
# with its own credentials; never public). Both: server-side encryption, all public access blocked, ACLs disabled,
# TLS-only bucket policy. The state bucket is versioned; ledger entries and audit records expire ([retention]).

locals {
  buckets = {
    state = "${var.name_prefix}-state"
    web   = "${var.name_prefix}-mta-sts"
  }
}

resource "aws_s3_bucket" "this" {
  for_each      = local.buckets
  bucket        = each.value
  force_destroy = var.force_destroy
  tags          = { role = each.key }
}

resource "aws_s3_bucket_ownership_controls" "this" {
  for_each = aws_s3_bucket.this
  bucket   = each.value.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "this" {
  for_each                = aws_s3_bucket.this
  bucket                  = each.value.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_server_side_encryption_configuration" "this" {
  for_each = aws_s3_bucket.this
  bucket   = each.value.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = var.kms_key_arn == null ? "AES256" : "aws:kms"
      kms_master_key_id = var.kms_key_arn
    }
    bucket_key_enabled = var.kms_key_arn != null
  }
}

data "aws_iam_policy_document" "tls_only" {
  for_each = aws_s3_bucket.this
  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [each.value.arn, "${each.value.arn}/*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "this" {
  for_each = aws_s3_bucket.this
  bucket   = each.value.id
  policy   = data.aws_iam_policy_document.tls_only[each.key].json
  # a policy is refused while the public access block is being written
  depends_on = [aws_s3_bucket_public_access_block.this]
}

resource "aws_s3_bucket_versioning" "state" {
  bucket = aws_s3_bucket.this["state"].id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "state" {
  bucket = aws_s3_bucket.this["state"].id

  rule {
    id     = "expire-idempotency-ledger"
    status = "Enabled"
    filter {
      prefix = var.idempotency_prefix
    }
    expiration {
      days = var.ledger_retention_days
    }
    noncurrent_version_expiration {
      noncurrent_days = 1
    }
  }

  # audit records (each step on a compromised key): [retention] audit_days; 0 keeps them (the rule is disabled).
  # Sealed DKIM keys (keys/) have no age rule: a signing key is as old as its rotation period; the rotation's
  # destroy step (dkim.keep_days after withdrawal) and `mailplane sweep` delete retired ones.
  rule {
    id     = "expire-audit-records"
    status = var.audit_retention_days > 0 ? "Enabled" : "Disabled"
    filter {
      prefix = "audit/"
    }
    expiration {
      days = max(var.audit_retention_days, 1)
    }
    noncurrent_version_expiration {
      noncurrent_days = 1
    }
  }

  # TLS report day objects (tlsrpt/<domain>/<day>.json, one per domain per day): [retention] tlsrpt_days.
  # S3 counts from the object's last write, `mailplane sweep` from the day in its key: at most one day apart.
  rule {
    id     = "expire-tls-reports"
    status = "Enabled"
    filter {
      prefix = "tlsrpt/"
    }
    expiration {
      days = var.tlsrpt_retention_days
    }
    noncurrent_version_expiration {
      noncurrent_days = 1
    }
  }

  rule {
    id     = "noncurrent-versions"
    status = "Enabled"
    filter {
      prefix = ""
    }
    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_days
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }

  # lifecycle rules on a versioned bucket act on versions: write the configuration after versioning is on
  depends_on = [aws_s3_bucket_versioning.state]
}
