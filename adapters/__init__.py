"""Toolkit adapters. Each subpackage's ``__init__`` declares capabilities as data and
names its adapter class; the toolkit itself is imported only when a job runs."""

import unified as _unified  # noqa: F401  (sets ORT/TF environment defaults first)
