# syntax=docker/dockerfile:1
# MirrorMaker 2 for template.yaml's MirrorMakerService: Apache Kafka's connect-mirror at the
# version `make regions` runs (scripts/mirrormaker/pom.xml), from Maven Central, on Java 17.
#
#   docker buildx build --platform linux/arm64 -f deploy/mirrormaker.Dockerfile -t connect-mirrormaker:$(git rev-parse --short HEAD) .
#
# Not built on the development machine (no Docker engine); the deploy pipeline builds it.

FROM maven:3.9-eclipse-temurin-17 AS jars
COPY scripts/mirrormaker/pom.xml /build/pom.xml
RUN mvn -q -B -f /build/pom.xml dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory=/libs

FROM eclipse-temurin:17-jre
COPY --from=jars /libs /opt/mirrormaker/libs
COPY scripts/kafka/log4j2.properties /opt/mirrormaker/log4j2.properties
COPY deploy/mirrormaker.sh /usr/local/bin/mirrormaker.sh
USER 10001
ENTRYPOINT ["/usr/local/bin/mirrormaker.sh"]
