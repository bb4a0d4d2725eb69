/*M!999999\- enable the sandbox mode */ 
-- MariaDB dump 10.19  Distrib 10.11.19-MariaDB, for debian-linux-gnu (x86_64)
--
-- Host: localhost    Database: app
-- ------------------------------------------------------
/*!40101 SET NAMES utf8mb4 */;

--
-- Current Database: `app`
--

CREATE DATABASE /*!32312 IF NOT EXISTS*/ `app` /*!40100 DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci */;

USE `app`;

DROP SEQUENCE IF EXISTS `invoice_seq`;
CREATE SEQUENCE `invoice_seq` start with 1000 minvalue 1 maxvalue 9223372036854775806 increment by 1 nocache nocycle ENGINE=InnoDB;
DO SETVAL(`invoice_seq`, 1002, 0);

DROP TABLE IF EXISTS `invoices`;
CREATE TABLE `invoices` (
  `id` bigint(20) NOT NULL DEFAULT nextval(`app`.`invoice_seq`),
  `other` bigint(20) NOT NULL DEFAULT nextval(`shared`.`global_seq`),
  `note` varchar(200) DEFAULT 'nextval(`app`.x);\nUSE `app`;',
  PRIMARY KEY (`id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

LOCK TABLES `invoices` WRITE;
/*!40000 ALTER TABLE `invoices` DISABLE KEYS */;
INSERT INTO `invoices` VALUES
(1000,1,'USE `app`;\nLOCK TABLES `x` WRITE;'),
(1001,2,'zweite 😀');
/*!40000 ALTER TABLE `invoices` ENABLE KEYS */;
UNLOCK TABLES;
DELIMITER ;;
/*!50106 CREATE*/ /*!50117 DEFINER=`root`@`localhost`*/ /*!50106 EVENT `tick` ON SCHEDULE EVERY 1 SECOND STARTS '2026-11-30 18:07:53' ON COMPLETION NOT PRESERVE ENABLE DO INSERT INTO app.audit (what) VALUES ('ENABLE')
*/ ;;
/*!50106 CREATE*/ /*!50117 DEFINER=`root`@`localhost`*/ /*!50106 EVENT `odd``name` ON SCHEDULE AT '2027-01-01 00:00:00' ON COMPLETION PRESERVE DISABLE ON SLAVE DO DELETE FROM audit */ ;;
/*!50106 CREATE*/ /*!50117 DEFINER=`root`@`localhost`*/ /*!50106 EVENT `off` ON SCHEDULE EVERY 1 DAY STARTS '2026-11-30 18:07:53' ON COMPLETION PRESERVE DISABLE DO DELETE FROM audit */ ;;
DELIMITER ;

USE `app`;

/*!50001 VIEW `next_ids` AS select nextval(`app`.`invoice_seq`) AS `n` */;

-- Dump completed
