"""A user's own MindFormers job (their run_mindformer.py and YAML, in MindFormers' environment) as a gang
launch with fail-fast, per-rank logs, resume on retry from MindFormers' meta.json, and progress read from
MindFormers' loss lines.

    run_job(JobSpec(program=[mf_python, "run_mindformer.py", "--config", "job.yaml", "--run_mode", "train"],
                    output_dir="out", nproc_per_node=2), attempt=0) -> JobResult
"""
from .job import JobFailed, JobResult, argv_for, read_metrics, run_job
from .progress import StepReport, parse_line, read_reports
from .resume import ResumePoint, resume_point
from .spec import JobSpec

__all__ = ["JobSpec", "JobResult", "JobFailed", "run_job", "argv_for", "read_metrics", "StepReport", "parse_line", "read_reports",
           "ResumePoint", "resume_point"]
