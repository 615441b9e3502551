"""The `deploy` stage's grid settings, declared without torch (grids are planned, and cell ids
computed, from them); the stage itself is bench/deploy/stage.py."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from bench.runner.stages import register_stage
from bench.store.deploy import DEPLOY_COLUMNS, DEPLOY_STAGE


class DeploySettings(BaseModel):
    """Grid settings of the deploy stage (part of the cell's identity)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_agreement: float = Field(0.99, ge=0.0, le=1.0)
    optimization_level: Literal["basic", "extended", "all"] = "extended"
    eval_batch_size: int = Field(256, ge=1)


register_stage(DEPLOY_STAGE, DeploySettings, runs="bench.deploy.stage:deploy",
               columns=DEPLOY_COLUMNS)
