from echo_lib.ops.cli import app

app(prog_name="echoctl")
