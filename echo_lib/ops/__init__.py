"""Operating the loop: the CLI, the demo, doctor, Airflow services and task callables, spark-submit."""
