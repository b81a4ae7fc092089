"""Operations: long-running work as pause-able, resume-able, cancellable Celery workflows."""
