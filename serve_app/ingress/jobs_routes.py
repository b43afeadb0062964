"""The jobs routes: a dataset file in (POST /jobs), its progress, results and errors out, cancel and delete.

A file is checked here, before any model work (jobs/dataset.py: format, UTF-8, the fields, the
record limit; params by the matching route's own rules), saved in the store and handed to the
JobRunner, which does the work in the background (serve_app/jobs). Every read is from the store,
so any Ingress replica answers for any job. A job belongs to the caller that made it: with an API
key configured, its key's digest (ingress/auth.py); another caller gets 404, as for a job that does
not exist.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from ray.serve.handle import DeploymentHandle

from serve_app.ingress import schemas
from serve_app.ingress.auth import caller_of
from serve_app.jobs.dataset import DatasetError, dataset_format, read_dataset
from serve_app.jobs.params import EvaluateJobParams, job_spec, params_errors, parse_params
from serve_app.jobs.runner import input_name, result_name
from serve_app.jobs.state import JobState
from serve_app.jobs.store import JobStore
from serve_app.settings import JobsSettings
from serve_app.text.classification import Scoring
from serve_app.text.errors import TextInputError

logger = logging.getLogger("ray.serve")
RUNNER_CALL_TIMEOUT_S = 10  # start/cancel return at once; a runner that is being replaced resumes the job itself
MEDIA_TYPES = {"jsonl": "application/x-ndjson", "csv": "text/csv; charset=utf-8", "tsv": "text/tab-separated-values"}


def _refusal(field: str, rule: str, status: int = 422) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": [{"field": field, "msg": rule, "type": "value_error"}]})


def _not_found(job_id: str) -> JSONResponse:
    return JSONResponse(status_code=404, content={"detail": f"no job {job_id!r}"})


def _view(state: JobState) -> dict[str, Any]:
    return state.view()


class JobsRoutes:
    def __init__(self, store: JobStore, runner: DeploymentHandle[Any], settings: JobsSettings, scoring: Scoring):
        self.store = store
        self.runner = runner
        self.settings = settings
        self.scoring = scoring

    def router(self, responses: dict[int | str, dict[str, Any]]) -> APIRouter:
        """The routes, each with every answer it gives in the OpenAPI document (`responses`: the shared errors)."""
        Answers = dict[int | str, dict[str, Any]]
        missing: Answers = {404: {"model": schemas.ErrorResponse, "description": "No such job of this caller's"}}
        unfinished: Answers = {409: {"model": schemas.ErrorResponse, "description": "The job has not succeeded (yet)"}}
        files: Answers = {
            200: {
                "description": "The file, as an attachment",
                "content": {media: {"schema": {"type": "string"}} for media in MEDIA_TYPES.values()},
            }
        }
        router = APIRouter(tags=["jobs"], responses=responses)
        router.add_api_route(
            "/jobs",
            self.create,
            methods=["POST"],
            status_code=202,
            response_model=schemas.JobView,
            responses={
                408: {"model": schemas.ErrorResponse, "description": "Upload not all received within upload_timeout_s"},
                413: {"model": schemas.ErrorResponse, "description": "Upload over jobs.max_upload_mb"},
            },
            summary="Start a job over a dataset file",
        )
        router.add_api_route("/jobs", self.list, methods=["GET"], response_model=schemas.JobList)
        router.add_api_route(
            "/jobs/{job_id}", self.show, methods=["GET"], response_model=schemas.JobView, responses=missing
        )
        for which, endpoint in (("result", self.result), ("errors", self.errors)):
            router.add_api_route(
                f"/jobs/{{job_id}}/{which}",
                endpoint,
                methods=["GET"],
                response_class=Response,
                responses={**files, **missing, **unfinished},
            )
        router.add_api_route(
            "/jobs/{job_id}",
            self.delete,
            methods=["DELETE"],
            response_model=schemas.JobView,
            responses={**missing, 202: {"model": schemas.JobView, "description": "Cancelling a job that runs"}},
            summary="Cancel a running job; delete a finished one",
        )
        return router

    async def _mine(self, request: Request, job_id: str) -> JobState | None:
        state = await asyncio.to_thread(self.store.load, job_id)
        return state if state is not None and state.owner == caller_of(request) else None

    async def create(
        self,
        request: Request,
        file: Annotated[UploadFile, File(description="CSV (header row) or JSONL, UTF-8; by its name's extension")],
        task: Annotated[Literal["augment", "classify", "evaluate"], Form(description="What to do with every record")],
        params: Annotated[
            str, Form(description="A JSON object: the matching route's fields without text/texts (docs/http-api.md)")
        ] = "{}",
    ) -> Any:
        try:
            asked = parse_params(task, params)
        except ValidationError as error:
            return JSONResponse(status_code=422, content={"detail": params_errors(error)})
        filename = file.filename or ""
        try:
            dataset_format(filename)
        except DatasetError as error:
            return _refusal(error.field, error.rule)
        data = await file.read()
        label_field = asked.label_field if isinstance(asked, EvaluateJobParams) else None
        try:
            dataset = await asyncio.to_thread(
                read_dataset, data, filename, asked.text_field, asked.id_field, label_field, self.settings.max_records
            )
            job_spec(asked, self.scoring, dataset.gold_labels)  # its rules now; the JobRunner makes it again
        except DatasetError as error:
            return _refusal(error.field, error.rule)
        except TextInputError as error:  # evaluate: the file's gold labels are not a valid candidate set
            return _refusal(f"params.{error.field}" if error.field != "labels" else "file", error.rule)
        state = JobState(
            id=uuid.uuid4().hex,
            owner=caller_of(request),
            task=task,
            params=asked.model_dump(mode="json", exclude_unset=True),
            filename=filename,
            total=len(dataset.items),
        )
        await asyncio.to_thread(self.store.create, state, input_name(state), data)
        try:
            await asyncio.wait_for(self.runner.start.remote(state.id, state.owner), timeout=RUNNER_CALL_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - the job is saved: the next JobRunner to start resumes it
            logger.warning("job %s saved, JobRunner not reached now (%r); it starts when one runs", state.id, exc)
        return JSONResponse(status_code=202, content=_view(state), headers={"Location": f"/jobs/{state.id}"})

    async def list(self, request: Request) -> Any:
        states = await asyncio.to_thread(self.store.states, caller_of(request))
        return {"jobs": [_view(state) for state in states]}

    async def show(self, request: Request, job_id: str) -> Any:
        state = await self._mine(request, job_id)
        return _not_found(job_id) if state is None else _view(state)

    async def result(self, request: Request, job_id: str) -> Any:
        return await self._file(request, job_id, "result")

    async def errors(self, request: Request, job_id: str) -> Any:
        return await self._file(request, job_id, "errors")

    async def _file(self, request: Request, job_id: str, which: str) -> Any:
        state = await self._mine(request, job_id)
        if state is None:
            return _not_found(job_id)
        if state.status != "succeeded":
            return JSONResponse(status_code=409, content={"detail": f"job {job_id} is {state.status}, not succeeded"})
        if which == "result":
            name = result_name(state)
            data = await asyncio.to_thread(self.store.result, job_id, name)
            fmt = name.rsplit(".", 1)[-1]
        else:
            data, fmt = await asyncio.to_thread(self.store.errors, job_id), "jsonl"
        if data is None:
            return _not_found(job_id)
        stem = state.filename.rsplit(".", 1)[0] or "dataset"
        download = f"{stem}.{which}.{fmt}"
        return Response(
            data,
            media_type=MEDIA_TYPES[fmt],
            headers={"Content-Disposition": f"attachment; filename*=UTF-8''{urllib.parse.quote(download, safe='')}"},
        )

    async def delete(self, request: Request, job_id: str) -> Any:
        """A running or queued job is cancelled (it stays listed as cancelled); a finished one is deleted (404
        after)."""
        state = await self._mine(request, job_id)
        if state is None:
            return _not_found(job_id)
        if state.finished:
            await asyncio.to_thread(self.store.delete, job_id)
            return _view(state)
        await asyncio.to_thread(self.store.request_cancel, job_id)
        try:
            await asyncio.wait_for(self.runner.cancel.remote(job_id), timeout=RUNNER_CALL_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - the marker stops it wherever it runs next
            logger.warning("job %s: cancel marker saved, JobRunner not reached (%r)", job_id, exc)
        return JSONResponse(status_code=202, content=_view(state))
