"""Routes: history (see the contract, ../shared/spec/contract.md)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
