"""Weights onto disk: the hub listing, the hub clients, the folder's record, progress, errors."""

from .fetch import DownloadResult, download_all, download_model
from .folder import local_files, local_folder_check, model_files, model_folder_problem
from .progress import DownloadProgress

__all__ = ["DownloadProgress", "DownloadResult", "download_all", "download_model", "local_files",
           "local_folder_check", "model_files", "model_folder_problem"]
