"""Put hadoop-aws and the AWS SDK bundle next to pyspark's own jars (image build, WITH_S3A=true).

Versions default to what pyspark's Hadoop needs: hadoop-aws of the same version as its
hadoop-client jars, and the AWS SDK bundle that Hadoop's own POM names
(``aws-java-sdk-v2.version`` in ``hadoop-project``). Pass them explicitly to override.
"""

import re
import sys
import urllib.request
from pathlib import Path

import pyspark

MAVEN = "https://repo1.maven.org/maven2"


def hadoop_version(jars: Path) -> str:
    found = sorted(jars.glob("hadoop-client-api-*.jar"))
    if not found:
        raise SystemExit(f"no hadoop-client-api jar in {jars}: pass the Hadoop version")
    return found[-1].name.removeprefix("hadoop-client-api-").removesuffix(".jar")


def sdk_version(hadoop: str) -> str:
    url = f"{MAVEN}/org/apache/hadoop/hadoop-project/{hadoop}/hadoop-project-{hadoop}.pom"
    with urllib.request.urlopen(url, timeout=60) as response:
        pom = response.read().decode()
    match = re.search(r"<aws-java-sdk-v2\.version>([^<]+)</aws-java-sdk-v2\.version>", pom)
    if match is None:
        raise SystemExit(f"{url} names no aws-java-sdk-v2.version: pass the SDK bundle version")
    return match.group(1)


def main() -> None:
    jars = Path(pyspark.__file__).parent / "jars"
    args = sys.argv[1:] + ["auto"] * (2 - len(sys.argv[1:]))
    hadoop = hadoop_version(jars) if args[0] == "auto" else args[0]
    sdk = sdk_version(hadoop) if args[1] == "auto" else args[1]
    for path in (
        f"org/apache/hadoop/hadoop-aws/{hadoop}/hadoop-aws-{hadoop}.jar",
        f"software/amazon/awssdk/bundle/{sdk}/bundle-{sdk}.jar",
    ):
        target = jars / path.rsplit("/", 1)[1]
        urllib.request.urlretrieve(f"{MAVEN}/{path}", target)
        print(f"fetched {target}")


if __name__ == "__main__":
    main()
