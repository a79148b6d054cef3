# Terraform and provider versions, and the AWS provider. `endpoint_url = null` targets real AWS with the usual
# credential chain; an endpoint URL (LocalStack: http://127.0.0.1:4566) sends every service there, path-style,
# without account look-ups (reference/local-stack.md §4). Credentials always come from the environment.

terraform {
  required_version = ">= 1.9"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "5.100.0"
    }
  }
}

locals {
  local_endpoint = var.endpoint_url != null
}

provider "aws" {
  region                      = var.region
  s3_use_path_style           = local.local_endpoint
  skip_credentials_validation = local.local_endpoint
  skip_metadata_api_check     = local.local_endpoint
  skip_requesting_account_id  = local.local_endpoint
  skip_region_validation      = local.local_endpoint

  endpoints {
    events         = var.endpoint_url
    iam            = var.endpoint_url
    kms            = var.endpoint_url
    lambda         = var.endpoint_url
    logs           = var.endpoint_url
    s3             = var.endpoint_url
    scheduler      = var.endpoint_url
    secretsmanager = var.endpoint_url
    sts            = var.endpoint_url
  }

  default_tags {
    tags = merge({ project = "mailplane", managed-by = "terraform" }, var.tags)
  }
}
