# mailplane: shortcuts for the quickstart scripts infra/local/demo and infra/local/test. Everything runs on 127.0.0.1.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
STACK_DIR ?= $(or $(MAILPLANE_STACK_DIR),$(CURDIR)/.stack)
export MAILPLANE_STACK_DIR := $(STACK_DIR)
VENV := .venv/bin

.PHONY: install up down test lint demo

install:  ## apt packages, project venv, LocalStack venv (idempotent)
	infra/local/install

up:  ## start the local stack (idempotent)
	infra/local/up

down:  ## stop the local stack
	infra/local/down

lint:
	$(VENV)/ruff check .
	$(VENV)/ruff format --check .
	$(VENV)/mypy

test:  ## the README's test command
	infra/local/test

demo:  ## the README's demo command
	infra/local/demo
