-- The PostgreSQL service holds two databases: POSTGRES_DB (mlflow) is created by the image,
-- this script adds Airflow's.
CREATE DATABASE airflow;
